"""The message bus: typed capnp events over pyzmq, camera frames in shared memory.

    pm = PubMaster(["robotState"]); pm.send("robotState", new_message("robotState", vEgo=3.0))
    sm = SubMaster(["robotState"]); sm.update(100); sm["robotState"].vEgo, sm.alive["robotState"]
    FrameServer("road", 1928, 1208).send(nv12); FrameClient("road").recv().y

Imports only the standard library, numpy, pyzmq and pycapnp.
"""
from ipc.framepool import Frame, FrameClient, FrameServer
from ipc.logfile import LogWriter, read_log
from ipc.messaging import MessageError, PubMaster, SubMaster, decode, new_message, sub_socket
from ipc.services import SERVICES, Service, camera_service, endpoint, get_service
from ipc.tensors import get_outputs, set_outputs

__all__ = ["Frame", "FrameClient", "FrameServer", "LogWriter", "read_log", "MessageError", "PubMaster",
           "SubMaster", "decode", "new_message", "sub_socket", "SERVICES", "Service", "camera_service",
           "endpoint", "get_service", "get_outputs", "set_outputs"]
