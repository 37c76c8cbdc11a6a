# modelreg's wire vocabulary between processes (see docs/wire-format.md).
#
# A frame is a small Cap'n Proto message (the control data). Tensor bytes are
# not embedded: a TensorRef names a chunk of a shared-memory segment the
# sender owns, so a tensor of any size costs the same to send. When shared
# memory is not available the same frame carries InlineTensor data instead.
@0xb7ee0abbf33da944;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("modelreg::wire");

const protocolVersion :UInt32 = 2; # 2: wake-ups on the socket, heartbeats (no eventfd)

# Capability bits exchanged in the handshake.
const capSharedMemory :UInt64 = 1;

struct TensorRef {
  segment @0 :UInt32;      # the sender's segment id (announced with its fd)
  offset @1 :UInt64;       # chunk start within the segment
  nbytes @2 :UInt64;       # chunk bytes the tensor may use
  generation @3 :UInt64;   # loan generation of the chunk (returns must match)
  dtype @4 :UInt8;         # modelreg::dtype value
  shape @5 :List(Int64);
  strides @6 :List(Int64); # in elements; empty: C-contiguous
  byteOffset @7 :UInt64;   # first element, from the chunk start
}

struct InlineTensor {
  dtype @0 :UInt8;
  shape @1 :List(Int64);
  data @2 :Data;           # C-contiguous bytes
}

struct NamedTensor {
  name @0 :Text;
  union {
    ref @1 :TensorRef;
    inline @2 :InlineTensor;
  }
}

struct ModelSpec {
  backend @0 :Text;
  params @1 :List(Param);
  instances @2 :UInt32;     # 0 or 1: one instance
  maxInstances @3 :UInt32;  # 0: no growth past `instances`
  struct Param {
    key @0 :Text;
    value @1 :Text;
  }
}

struct Error {
  code @0 :UInt8;          # modelreg::errc value
  message @1 :Text;
}

struct Hello {
  protocolVersion @0 :UInt32;
  capabilities @1 :UInt64; # capSharedMemory, ...
  maxLoanBytes @2 :UInt64; # quota the sender grants the peer
  maxLoans @3 :UInt32;
  pid @4 :Int32;
  ringSlots @5 :UInt32;    # slots in the sender's outbound ring
}

struct Request {
  id @0 :UInt64;
  union {
    getOrLoad @1 :GetOrLoad;
    infer @2 :Infer;
    release @3 :UInt64;    # a lease id from a Handle
    unload @4 :Text;
    status @5 :Void;
    subscribe @6 :Void;
    echo @7 :List(NamedTensor);  # answered with the same tensors (tests, benchmarks)
    unsubscribe @8 :Void;
    openSession @9 :OpenSession;   # answered with `session` (an instance process: outputs)
    push @10 :Push;                # answered with the partial result (outputs)
    finishSession @11 :UInt64;     # answered with the final result (outputs)
    cancelSession @12 :UInt64;     # answered with ok
  }
  struct OpenSession {
    key @0 :Text;
    lease @1 :UInt64;      # as in Infer (0: by key)
    waitMs @2 :UInt32;     # how long to wait for a free instance before `busy`
  }
  struct Push {
    session @0 :UInt64;
    inputs @1 :List(NamedTensor);
  }
  struct GetOrLoad {
    key @0 :Text;
    spec @1 :ModelSpec;    # empty backend: a catalog name
  }
  struct Infer {
    key @0 :Text;
    inputs @1 :List(NamedTensor);
    lease @2 :UInt64;      # a lease this connection holds on `key` (from a Handle):
                           # the node hands the request straight to the model;
                           # 0: routed by key through the registry
  }
}

struct Handle {
  lease @0 :UInt64;
  key @1 :Text;
  generation @2 :UInt64;
  memoryBytes @3 :UInt64;
  description @4 :Text;
}

struct Response {
  id @0 :UInt64;
  union {
    error @1 :Error;
    handle @2 :Handle;
    outputs @3 :List(NamedTensor);
    ok @4 :Void;
    statusJson @5 :Text;   # a registry_snapshot as JSON, plus "connections"
    evicted @6 :Evicted;   # what an unload freed
    session @7 :UInt64;    # an opened session
  }
  struct Evicted {
    count @0 :UInt64;
    freedBytes @1 :UInt64;
  }
}

struct Frame {
  union {
    hello @0 :Hello;
    request @1 :Request;
    response @2 :Response;
    event @3 :Text;        # a status event, JSON (to subscribers)
    goodbye @4 :Text;      # the server is shutting down; the reason
  }
}
