"""What every device profiling script shares (json_job ships this file beside it): importing its
runtime or exiting with "missing-runtime NAME: HOW TO INSTALL", and answering a request.

    modules = require({"numpy": "pip install numpy", ...})       # at import time
    serve({"profile": profile, ...}, runtime="onnxruntime 1.31")  # in main()

Standard library only: it runs on devices without compressor installed.
"""
import json
import os
import socket
import sys

MISSING_RUNTIME_EXIT = 17  # the caller's signal that a module is missing on the device


def missing(names, install):
    sys.stderr.write("missing-runtime {}: {}\n".format(",".join(names), " && ".join(install[n] for n in names)))
    sys.exit(MISSING_RUNTIME_EXIT)


def require(install):
    """Import every module named in `install` (name -> how to install it); exit 17 naming the missing ones."""
    modules, absent = {}, []
    for name in install:
        try:
            modules[name] = __import__(name)
        except ImportError:
            absent.append(name)
    if absent:
        missing(absent, install)
    return [modules[name] for name in install]


def peak_rss_bytes():
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def serve(modes, runtime, **extra):
    """`python3 SCRIPT request.json result.json`: run the request's mode, and write its result with
    the measuring process's host, pid, peak memory and SSH session."""
    with open(sys.argv[1]) as f:
        request = json.load(f)
    result = modes[request["mode"]](request)
    result.update(host=socket.gethostname(), pid=os.getpid(), runtime=runtime, peak_rss_bytes=peak_rss_bytes(),
                  ssh_connection=os.environ.get("SSH_CONNECTION"), **extra)
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
