# Bus messages: one Event envelope around a union of message types.
# Camera pixels never travel on the bus; a cameraFrame only names a buffer in a shared-memory pool.
# Times are CLOCK_MONOTONIC nanoseconds unless a field says otherwise.
@0xd3b5c1e2a4f60718;

struct Event {
  logMonoTime @0 :UInt64;   # when the message was created
  valid @1 :Bool;           # the producer vouches for the content
  seq @2 :UInt64;           # counts a publisher's sends of this service: gaps are losses, rates come from it

  union {
    heartbeat @3 :Heartbeat;
    cameraFrame @4 :CameraFrame;
    modelOutput @5 :ModelOutput;
    calibration @6 :Calibration;
    robotState @7 :RobotState;
  }
}

struct Heartbeat {
  process @0 :Text;
  pid @1 :UInt32;
}

struct CameraFrame {
  camera @0 :Text;
  frameId @1 :UInt32;
  timestampSof @2 :UInt64;  # start of frame (exposure)
  timestampEof @3 :UInt64;  # end of frame (readout done)
  width @4 :UInt32;
  height @5 :UInt32;
  stride @6 :UInt32;        # bytes from one row to the next, in every plane
  format @7 :PixelFormat;
  pool @8 :Text;            # file name of the pool in /dev/shm
  poolId @9 :UInt64;        # random per pool: a new id means the server restarted
  bufferIndex @10 :UInt32;
  bufferSeq @11 :UInt64;    # the sequence written before and after the pixels of this frame

  enum PixelFormat {
    nv12 @0;                # Y plane, then interleaved UV at half resolution
  }
}

struct ModelOutput {
  frameId @0 :UInt32;           # camera frame the outputs were computed from
  frameAge @1 :UInt32;          # frames between that camera frame and the newest one seen
  frameDropPerc @2 :Float32;
  modelExecutionTime @3 :Float32;  # seconds, whole run on the host
  gpuExecutionTime @4 :Float32;    # seconds, device time only
  outputs @5 :List(Tensor);
}

struct Tensor {
  name @0 :Text;
  shape @1 :List(UInt32);
  data @2 :Data;            # float32, little-endian, C order: read with np.frombuffer
}

struct Calibration {
  warpMatrix @0 :List(Float32);  # 3x3 row-major: camera pixels -> model input pixels
}

struct RobotState {
  vEgo @0 :Float32;              # m/s
  aEgo @1 :Float32;              # m/s^2
  yawRate @2 :Float32;           # rad/s
  steeringAngleDeg @3 :Float32;
  standstill @4 :Bool;
}

# Log files (ipc/logfile.py): a small header, then one LogEntry message per recorded event.
struct LogEntry {
  service @0 :Text;
  recvMonoTime @1 :UInt64;  # when the recorder received it
  event @2 :Data;           # the Event bytes exactly as they were on the bus
}
