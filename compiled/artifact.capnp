# The header of an edgeml artifact: everything about a compiled program except its weights.
# The weights follow the header in the file as one raw, 64-byte aligned blob (see compiled/artifact.py).
# Sizes and offsets are in bytes; buffers and tensors refer to each other by index into `buffers`.
@0xd8fe050b8fb71c35;

struct Program {
  compilerVersion @0 :Text;
  target @1 :Text;            # pocl | nvidia | adreno
  source @2 :Text;            # one OpenCL program holding every kernel
  buildOptions @3 :Text;
  inputs @4 :List(Tensor);
  outputs @5 :List(Tensor);
  buffers @6 :List(Buffer);
  kernels @7 :List(Kernel);
  arenaSize @8 :UInt64;
  align @9 :UInt32;           # arena and weights offsets are multiples of this
  choices @10 :List(Choice);  # on-device tuning (edgeml-tune): which candidate each kernel uses on a device
}

# Another rendering of a kernel (same name, same arguments): its whole `__kernel` function and its launch sizes
struct Candidate {
  source @0 :Text;
  globalSize @1 :List(UInt64);
  localSize @2 :List(UInt64);
}

# The candidates timed fastest on one device: picks[i] for kernels[i], 0 the kernel in Program.source, j its
# candidates[j - 1]. Unique by (device, driver), sorted by them.
struct Choice {
  device @0 :Text;            # platform / device name (type), as compiled.device.describe writes it
  driver @1 :Text;            # CL_DRIVER_VERSION
  picks @2 :List(UInt8);
}

struct Tensor {
  name @0 :Text;
  shape @1 :List(UInt64);
  dtype @2 :Text;             # a numpy dtype name: float32, float16, int32, uint8, bool, ...
  buffer @3 :UInt32;
}

struct Buffer {
  kind @0 :Kind;
  offset @1 :UInt64;          # into the arena or the weights blob; 0 for input and output
  nbytes @2 :UInt64;          # an image: height * row pitch (the pitch is nbytes / imageHeight, a multiple of 64)
  # image only (kind image: weights in the blob read through image2d_t, RGBA, 4 elements per texel, row-major);
  # 16-bit fields that fill the unused bits of the first data word, so buffers of other kinds keep their bytes
  imageFormat @3 :ImageFormat;
  imageWidth @4 :UInt16;      # texels per row
  imageHeight @5 :UInt16;     # rows
  # arena only (format 2): an activation stored in planes of planeBytes, each planePitch bytes after the one before
  # (its channel planes padded apart); both 0: the elements one after another
  planeBytes @6 :UInt32;
  planePitch @7 :UInt32;

  enum Kind {
    arena @0;
    weights @1;
    input @2;
    output @3;
    image @4;
  }

  enum ImageFormat {
    none @0;
    float32 @1;               # CL_RGBA / CL_FLOAT
    float16 @2;               # CL_RGBA / CL_HALF_FLOAT
  }
}

struct Kernel {
  name @0 :Text;              # entry point in Program.source
  globalSize @1 :List(UInt64);
  localSize @2 :List(UInt64); # empty: the driver chooses
  args @3 :List(Arg);
  flops @4 :UInt64;           # an estimate, for inspect and profile
  bytes @5 :UInt64;           # the bytes of its buffer arguments (an image: its data without row padding); the loader
                              # checks it, so an argument pointed at another buffer does not add up
  candidates @6 :List(Candidate);  # other renderings worth timing on the device (at most 3), fastest first by the
                                   # compiler's order
  withPrevious @7 :Bool;      # runs in one launch with the kernel before it (a chain, compiled/chain.py); a runtime
                              # that ignores it launches the kernels one by one, with the same results
}

struct Arg {
  union {
    buffer @0 :UInt32;
    int32 @1 :Int32;
    float32 @2 :Float32;
  }
}
