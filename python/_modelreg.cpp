// The C++ side of the Python package: the process-local registry for Python
// objects. Python code sees it through python/modelreg/__init__.py.
//
// GIL rules: every call that may wait (get_or_load, metrics, unload, ...)
// releases the GIL first and takes it back through `python_gate`; a Python
// loader runs on a Python daemon thread of its own, which the registry's
// loader thread starts and waits for; Python objects are only ever dropped
// with the GIL held. At interpreter exit, `_shutdown` (registered with
// atexit) closes the gate, releases every handle, stops every registry and
// the actor system with the GIL released, so no actor thread waits for a
// GIL the exiting thread holds, and no thread takes the GIL while the
// interpreter finalizes.
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <string>
#include <type_traits>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/tensor/dlpack.hpp"

#include <dlpack/dlpack.h>

#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/registry.hpp"

namespace py = pybind11;

namespace modelreg::python {

namespace {

/// A Python error raised as modelreg.ModelRegError (or a subclass), with the
/// modelreg code name.
struct error : std::runtime_error {
  error(std::string code, const std::string& what) : std::runtime_error(what), code(std::move(code)) {}
  std::string code;
};

struct load_error : error {
  using error::error;
};

[[noreturn]] void raise(const caf::error& caught) {
  auto err = as_modelreg_error(caught, errc::unavailable, "the node");
  errc code = errc::unavailable;
  to_errc(err, code);
  if (code == errc::load_failed || code == errc::load_timeout)
    throw load_error{to_string(code), describe(err)};
  throw error{to_string(code), describe(err)};
}

/// The door back into Python for threads that left it (a call waiting with
/// the GIL released) or were never in it (a registry loader thread).
///
/// CPython ends any thread that takes the GIL once the interpreter is
/// finalizing (pthread_exit). Unwinding that through C++ frames aborts the
/// process ("terminate called without an active exception", or "exception
/// not rethrown" through a catch-all). So at exit `_shutdown` closes this
/// gate, before finalization starts, and waits for the threads inside (on
/// their way back into Python, or a loader thread starting a loader); a call
/// that returns after that parks its thread for good instead of taking the
/// GIL. The process then exits normally around it.
struct python_gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool closed = false;
  std::thread::id closer; // the exiting thread: the one that finalizes
  size_t inside = 0;      // threads between `try_enter` and `leave`

  /// False once closed (except for the thread that closed it, which goes on
  /// to finalize the interpreter); else the caller may take the GIL and
  /// must call `leave()` once it is back in Python's hands (a Python thread
  /// holding the GIL) or out of Python (any other thread, GIL released).
  bool try_enter() {
    std::lock_guard guard{mutex};
    if (closed && std::this_thread::get_id() != closer)
      return false;
    ++inside;
    return true;
  }
  void leave() {
    std::lock_guard guard{mutex};
    --inside;
    cv.notify_all();
  }
  /// Blocks the calling thread forever (the process is exiting).
  [[noreturn]] void park() {
    std::unique_lock lock{mutex};
    for (;;)
      cv.wait(lock);
  }
  /// At exit, with the GIL released: no thread enters Python after this.
  void close() {
    std::unique_lock lock{mutex};
    closed = true;
    closer = std::this_thread::get_id();
    cv.wait(lock, [this] { return inside == 0; });
  }
};

python_gate& gate() {
  static auto* g = new python_gate; // never destroyed: parked threads use it
  return *g;
}

/// The GIL released for a scope; taken back through the gate at its end
/// (never, once the interpreter exits: the thread parks instead).
class gil_released {
public:
  gil_released() : state_(PyEval_SaveThread()) {}
  ~gil_released() {
    if (!gate().try_enter())
      gate().park();
    PyEval_RestoreThread(state_);
    gate().leave();
  }
  gil_released(const gil_released&) = delete;
  gil_released& operator=(const gil_released&) = delete;

private:
  PyThreadState* state_;
};

/// Runs `f` with the GIL released and returns what it returns.
template <class F>
decltype(auto) released(F&& f) {
  gil_released nogil;
  return f();
}

/// Runs `f` (which returns a caf::expected) with the GIL released: its value,
/// or its error raised in Python.
template <class F>
auto without_gil(F&& f) {
  auto out = released(std::forward<F>(f));
  if (!out)
    raise(out.error());
  return std::move(*out);
}

/// References to drop on the main thread: the last owner of a Python object
/// may be an actor thread, which must not take the GIL (at interpreter exit
/// Python ends such a thread with pthread_exit, and the unwinding through a
/// destructor aborts the process). Py_AddPendingCall needs no GIL; the main
/// thread drops them at its next chance.
struct deferred_decrefs {
  std::mutex mutex;
  std::vector<PyObject*> objects;
  bool scheduled = false;
};

deferred_decrefs& pending_decrefs() {
  static auto* d = new deferred_decrefs; // never destroyed: used until exit
  return *d;
}

int drain_decrefs(void*) {
  std::vector<PyObject*> objects;
  {
    auto& d = pending_decrefs();
    std::lock_guard guard{d.mutex};
    objects.swap(d.objects);
    d.scheduled = false;
  }
  for (auto* o : objects)
    Py_DECREF(o);
  return 0;
}

void decref_later(PyObject* o) {
  auto& d = pending_decrefs();
  std::lock_guard guard{d.mutex};
  d.objects.push_back(o);
  // The queue of pending calls is short: schedule once per batch, and try
  // again with the next object if it is full.
  if (!d.scheduled && Py_AddPendingCall(drain_decrefs, nullptr) == 0)
    d.scheduled = true;
}

bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

/// A Python object whose owner may die on any thread: dropped at once when
/// the dying thread holds the GIL, else on the main thread (above); leaked
/// when the interpreter is gone.
struct gil_object {
  explicit gil_object(py::object o) : obj(std::move(o)) {}
  ~gil_object() {
    if (!Py_IsInitialized() || finalizing()) {
      obj.release(); // the interpreter is (going) away: leak rather than crash
      return;
    }
    if (PyGILState_Check()) {
      obj = py::object{};
      return;
    }
    decref_later(obj.release().ptr());
  }
  py::object obj;
};

/// A Python object as a registry model: the registry shares and evicts it;
/// Python code uses it directly through its handle (`handle.model`).
class py_model final : public model {
public:
  py_model(py::object obj, uint64_t bytes, std::string describe)
    : obj_(std::make_shared<gil_object>(std::move(obj))), bytes_(bytes), describe_(std::move(describe)) {}

  caf::expected<tensor_map> infer(const tensor_map&, tensor_allocator&) override {
    return make_error(errc::unsupported, "a Python model is called through handle.model");
  }
  uint64_t memory_bytes() const override { return bytes_; }
  std::string describe() const override { return describe_; }

  const std::shared_ptr<gil_object>& object() const { return obj_; }

private:
  std::shared_ptr<gil_object> obj_;
  uint64_t bytes_;
  std::string describe_;
};

/// An actor system of this process. Registries and Unix-socket clients
/// share one; TCP clients share one with CAF's middleman; TLS clients share
/// one per set of certificate files (CAF configures TLS per actor system).
struct runtime {
  runtime(const std::string& uri, const tls_files& tls) {
    configure_for_connect(cfg, uri, tls);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
  system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
};

class handle_wrapper;
class registry_wrapper;
class client_wrapper;

std::mutex live_mutex;
std::map<std::string, std::shared_ptr<runtime>> the_runtimes;
std::set<handle_wrapper*> live_handles;
std::set<registry_wrapper*> live_registries;
std::set<client_wrapper*> live_clients;

/// The actor system for talking to `uri` (or for local registries).
std::shared_ptr<runtime> get_runtime(const std::string& uri = {}, const tls_files& tls = {}) {
  std::string kind = "local";
  if (uri.rfind("tcp://", 0) == 0)
    kind = tls.any() ? "tls\n" + tls.cert + "\n" + tls.key + "\n" + tls.ca : "tcp";
  std::lock_guard guard{live_mutex};
  auto& rt = the_runtimes[kind];
  if (!rt)
    rt = std::make_shared<runtime>(uri, tls);
  return rt;
}

/// A handle: the lease plus the Python object it keeps loaded.
class handle_wrapper {
public:
  handle_wrapper(model_handle h, std::shared_ptr<gil_object> obj)
    : handle_(std::move(h)), obj_(std::move(obj)) {
    std::lock_guard guard{live_mutex};
    live_handles.insert(this);
  }
  ~handle_wrapper() {
    {
      std::lock_guard guard{live_mutex};
      live_handles.erase(this);
    }
    drop();
  }

  py::object model() const {
    std::lock_guard guard{mutex_};
    if (!obj_ || !handle_.valid())
      throw error{"handle_released", "the handle for '" + key_unlocked() + "' was released"};
    return obj_->obj;
  }
  std::string key() const {
    std::lock_guard guard{mutex_};
    return key_unlocked();
  }
  bool valid() const {
    std::lock_guard guard{mutex_};
    return obj_ && handle_.valid();
  }
  uint64_t generation() const {
    std::lock_guard guard{mutex_};
    return handle_.generation();
  }
  uint64_t memory_bytes() const {
    std::lock_guard guard{mutex_};
    return handle_.memory_bytes();
  }
  /// Gives the lease back; false if it was already.
  bool release() {
    std::lock_guard guard{mutex_};
    bool had = obj_ != nullptr && handle_.release();
    obj_.reset();
    return had;
  }
  /// At exit: forget everything without touching Python (GIL released).
  void drop() {
    std::lock_guard guard{mutex_};
    handle_.release();
    handle_ = model_handle{};
    if (obj_) {
      // Keep the object's last reference out of this thread if it has no GIL.
      obj_.reset();
    }
  }

private:
  std::string key_unlocked() const { return key_.empty() ? handle_.key() : key_; }
  mutable std::mutex mutex_;
  model_handle handle_;
  std::shared_ptr<gil_object> obj_;
  std::string key_;
};

/// `modelreg._run_loader`, set when the package is imported.
PyObject* loader_runner = nullptr;

/// Runs a Python loader on a daemon thread of its own, started from the
/// registry's loader thread, which waits for it without the GIL. Python code
/// never runs on the registry's thread: if the interpreter exits while a
/// loader runs (one that timed out, or one a daemon thread waits for),
/// CPython ends the thread running it, which only a Python thread survives.
caf::expected<model_ptr> run_python_loader(gil_object& fn, const std::string& key,
                                           std::function<void(const std::shared_ptr<py_model>&)> on_model) {
  auto result = std::make_shared<std::promise<caf::expected<model_ptr>>>();
  auto future = result->get_future();
  if (loader_runner == nullptr) // set by `import modelreg`
    return make_error(errc::load_failed, "the loader runner is not set: import modelreg, not "
                                         "modelreg._modelreg alone");
  if (!gate().try_enter())
    return make_error(errc::shutting_down, "the Python interpreter is exiting");
  // This thread is not a Python thread: it must be out of Python before the
  // interpreter finalizes (the gate waits for it), and is, quickly: it only
  // starts the loader's thread.
  auto gil = PyGILState_Ensure();
  try {
    // Called once by modelreg._run_loader on the loader's thread.
    auto done = py::cpp_function([result, key, on_model](py::object obj, uint64_t bytes,
                                                         const std::string& type_name,
                                                         const std::string& traceback) {
      if (!traceback.empty()) {
        // The whole traceback travels in the error: every waiter raises it.
        result->set_value(make_error(errc::load_failed, "loader for '" + key + "' raised:\n" + traceback));
        return;
      }
      auto m = std::make_shared<py_model>(std::move(obj), bytes, type_name);
      on_model(m);
      result->set_value(model_ptr{std::move(m)});
    });
    py::module_::import("threading")
      .attr("Thread")(py::arg("target") = py::handle{loader_runner},
                      py::arg("args") = py::make_tuple(fn.obj, std::move(done)),
                      py::arg("name") = "modelreg loader " + key, py::arg("daemon") = true)
      .attr("start")();
  } catch (py::error_already_set& e) {
    result->set_value(make_error(errc::load_failed, "could not start the loader of '" + key + "': " + e.what()));
  }
  PyGILState_Release(gil);
  gate().leave();
  return future.get();
}

class registry_wrapper {
public:
  registry_wrapper(double ttl_seconds, uint64_t max_memory_bytes, size_t max_models,
                   size_t max_concurrent_loads, double load_timeout_seconds)
    : rt_(get_runtime()) {
    registry_config cfg;
    cfg.idle_ttl = std::chrono::milliseconds{static_cast<int64_t>(ttl_seconds * 1000)};
    cfg.ttl_sweep = ttl_seconds > 0;
    cfg.max_memory_bytes = max_memory_bytes;
    cfg.max_models = max_models;
    cfg.max_concurrent_loads = max_concurrent_loads;
    if (load_timeout_seconds > 0)
      cfg.load_timeout = std::chrono::milliseconds{static_cast<int64_t>(load_timeout_seconds * 1000)};
    reg_ = std::make_shared<registry>(*rt_->sys, cfg);
    std::lock_guard guard{live_mutex};
    live_registries.insert(this);
  }
  ~registry_wrapper() {
    {
      std::lock_guard guard{live_mutex};
      live_registries.erase(this);
    }
    close();
  }

  /// Stops the registry once no call uses it any more: later calls raise
  /// `shutting_down`, calls already running finish first (they hold it).
  /// Its models are dropped on actor threads, which take the GIL: the
  /// caller must not hold it.
  void close() {
    std::shared_ptr<registry> r;
    {
      std::lock_guard guard{mutex_};
      r = std::move(reg_);
    }
    r.reset();
  }

  /// The registry for one call. Whoever drops the last reference destroys
  /// it, which needs the GIL released: `use` does that at the end of the
  /// call (it is made and dropped with the GIL held).
  struct use {
    std::shared_ptr<registry> ptr;
    registry* operator->() const { return ptr.get(); }
    ~use() {
      released([this] { ptr.reset(); });
    }
  };

  use get() {
    std::lock_guard guard{mutex_};
    if (!reg_)
      throw error{"shutting_down", "the registry was closed"};
    return use{reg_};
  }

  std::unique_ptr<handle_wrapper> get_or_load(const std::string& key, py::function loader) {
    auto fn = std::make_shared<gil_object>(std::move(loader));
    auto reg = get();
    loader_fn load = [fn, key, objs = objects_]() -> caf::expected<model_ptr> {
      return run_python_loader(*fn, key, [objs, key](const std::shared_ptr<py_model>& m) {
        std::lock_guard guard{objs->mutex};
        objs->by_key[key] = m;
      });
    };
    auto h = without_gil([&] { return reg->get_or_load(key, std::move(load)); });
    auto obj = object_of(h);
    if (!obj)
      throw error{"model_crashed", "the model under '" + key + "' is gone"};
    return std::make_unique<handle_wrapper>(std::move(h), std::move(obj));
  }

  std::string metrics_json() {
    auto reg = get();
    return to_json(without_gil([&] { return reg->metrics(); }));
  }

  py::tuple evict_expired() {
    auto reg = get();
    auto rep = without_gil([&] { return reg->evict_expired(); });
    return py::make_tuple(rep.count, rep.freed_bytes);
  }

  py::tuple unload(const std::string& key) {
    auto reg = get();
    auto rep = without_gil([&] { return reg->unload(key); });
    return py::make_tuple(rep.count, rep.freed_bytes);
  }

private:
  /// The Python object a handle's model holds. One model per key is loaded
  /// while a handle on it lives, so the latest load under the key is it.
  std::shared_ptr<gil_object> object_of(const model_handle& h) {
    std::lock_guard guard{objects_->mutex};
    auto i = objects_->by_key.find(h.key());
    if (i == objects_->by_key.end())
      return nullptr;
    auto m = i->second.lock();
    return m ? m->object() : nullptr;
  }

  /// Loaded Python models by key (written by loader threads).
  struct objects {
    std::mutex mutex;
    std::map<std::string, std::weak_ptr<py_model>> by_key;
  };

  std::shared_ptr<runtime> rt_;
  std::mutex mutex_;
  std::shared_ptr<registry> reg_;
  std::shared_ptr<objects> objects_ = std::make_shared<objects>();
};


// -- the client of a node: tensors as NumPy arrays, DLPack out -------------

/// NumPy's type string for a dtype ("<f4", "|u1", ...).
std::string typestr(dtype t) {
  switch (t) {
    case dtype::f16: return "<f2";
    case dtype::f32: return "<f4";
    case dtype::f64: return "<f8";
    case dtype::i8: return "|i1";
    case dtype::i16: return "<i2";
    case dtype::i32: return "<i4";
    case dtype::i64: return "<i8";
    case dtype::u8: return "|u1";
    case dtype::u16: return "<u2";
    case dtype::u32: return "<u4";
    case dtype::u64: return "<u8";
    case dtype::boolean: return "|b1";
  }
  return "|V1";
}

/// The dtype of a NumPy array, or a TypeError naming what is unsupported.
dtype dtype_of_array(const py::array& a) {
  auto descr = a.dtype();
  auto kind = descr.kind();
  auto size = descr.itemsize();
  // '=' native, '|' not applicable, '<' little-endian (native here).
  auto order = py::detail::array_descriptor_proxy(descr.ptr())->byteorder;
  if (order == '>')
    throw py::type_error("non-native byte order is not supported");
  if (kind == 'f' && size == 2) return dtype::f16;
  if (kind == 'f' && size == 4) return dtype::f32;
  if (kind == 'f' && size == 8) return dtype::f64;
  if (kind == 'i' && size == 1) return dtype::i8;
  if (kind == 'i' && size == 2) return dtype::i16;
  if (kind == 'i' && size == 4) return dtype::i32;
  if (kind == 'i' && size == 8) return dtype::i64;
  if (kind == 'u' && size == 1) return dtype::u8;
  if (kind == 'u' && size == 2) return dtype::u16;
  if (kind == 'u' && size == 4) return dtype::u32;
  if (kind == 'u' && size == 8) return dtype::u64;
  if (kind == 'b' && size == 1) return dtype::boolean;
  throw py::type_error("unsupported dtype " + py::str(a.dtype()).cast<std::string>() +
                       " (numeric or bool only)");
}

/// A tensor from a worker, for Python: read-only, zero-copy through the array
/// interface and DLPack; its memory stays the worker's until the last
/// reference (array, DLPack consumer or this object) is gone.
/// Where the bytes at `p` live, for a Tensor's repr: the mapping in
/// /proc/self/maps that holds them.
std::string memory_of(const void* p) {
  auto addr = reinterpret_cast<uintptr_t>(p);
  std::ifstream maps{"/proc/self/maps"};
  std::string line;
  while (std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2 || addr < lo || addr >= hi)
      continue;
    if (line.find("memfd:modelreg") != std::string::npos)
      return "shared memory, zero-copy";
    return "this process's memory";
  }
  return "unknown memory";
}

// modelreg.Tensor, an output tensor of a node, as a plain CPython type: a
// call makes one per output and numpy.from_dlpack / torch.from_dlpack call
// its __dlpack__ once, and from an idle process pybind11's instance registry
// and general dispatcher cost several microseconds of cold caches per call
// more than this does (docs/python.md, "What a call costs").
struct py_tensor {
  PyObject_HEAD
  tensor t;
};

PyTypeObject* tensor_type = nullptr;

const tensor& tensor_of(PyObject* self) {
  return reinterpret_cast<py_tensor*>(self)->t;
}

/// A new Tensor holding `t` (a new reference; nullptr with a Python error).
PyObject* new_tensor(const tensor& t) {
  auto* self = PyObject_New(py_tensor, tensor_type);
  if (self == nullptr)
    return nullptr;
  new (&self->t) tensor(t);
  return reinterpret_cast<PyObject*>(self);
}

void tensor_dealloc(PyObject* self) {
  auto* type = Py_TYPE(self);
  // The last reference to the worker's memory may go here: it is given back
  // (a descriptor on the ring, no waiting).
  reinterpret_cast<py_tensor*>(self)->t.~tensor();
  type->tp_free(self);
  Py_DECREF(type); // a heap type
}

/// Runs `f` for a plain CPython function: a C++ exception becomes the
/// Python error pybind11 would raise for it (nullptr).
template <class F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (...) {
    // As pybind11's dispatcher does: this module's translators (ModelRegError,
    // LoadError), then pybind11's own (TypeError, ValueError, ...).
    namespace d = py::detail;
    if (!d::apply_exception_translators(d::get_local_internals().registered_exception_translators) &&
        !d::apply_exception_translators(d::get_internals().registered_exception_translators))
      PyErr_SetString(PyExc_SystemError, "an exception escaped modelreg's translators");
  }
  return nullptr;
}

PyObject* tensor_repr(PyObject* self) {
  return guarded([&] {
    const auto& t = tensor_of(self);
    std::string shape;
    for (size_t i = 0; i < t.rank(); ++i)
      shape += (i ? ", " : "") + std::to_string(t.shape()[i]);
    auto text = "<modelreg.Tensor " + to_string(t.type()) + "[" + shape + "], " +
                std::to_string(t.nbytes()) + " bytes, " +
                (t.writable() ? "writable" : "read-only") + ", in " + memory_of(t.data()) + ">";
    return PyUnicode_FromStringAndSize(text.data(), static_cast<Py_ssize_t>(text.size()));
  });
}

/// __dlpack__(stream=None): `stream` means nothing for CPU memory; any other
/// argument is refused, as a Python method with that signature would.
PyObject* tensor_dlpack(PyObject* self, PyObject* const*, Py_ssize_t nargs, PyObject* kwnames) {
  auto nkw = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
  if (nargs + nkw > 1 ||
      (nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "stream") != 0)) {
    PyErr_SetString(PyExc_TypeError, "__dlpack__() takes one optional argument, stream");
    return nullptr;
  }
  return guarded([&] {
    auto* managed = to_dlpack(tensor_of(self));
    auto destructor = [](PyObject* capsule) {
      // Called when the capsule dies; consumed capsules are renamed.
      if (PyCapsule_IsValid(capsule, "dltensor")) {
        auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
        if (m != nullptr && m->deleter != nullptr)
          m->deleter(m);
      }
    };
    auto* capsule = PyCapsule_New(managed, "dltensor", destructor);
    if (capsule == nullptr)
      managed->deleter(managed);
    return capsule;
  });
}

PyObject* tensor_dlpack_device(PyObject*, PyObject*) {
  return Py_BuildValue("(ii)", 1, 0); // kDLCPU, device 0
}

PyObject* tensor_array_interface(PyObject* self, void*) {
  return guarded([&] {
    const auto& t = tensor_of(self);
    py::tuple shape(t.rank());
    py::tuple strides(t.rank());
    for (size_t i = 0; i < t.rank(); ++i) {
      shape[i] = t.shape()[i];
      strides[i] = t.strides()[i] * static_cast<int64_t>(itemsize(t.type()));
    }
    py::dict d;
    d["shape"] = shape;
    d["strides"] = strides;
    d["typestr"] = typestr(t.type());
    d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(t.data()), !t.writable());
    d["version"] = 3;
    return d.release().ptr();
  });
}

PyObject* tensor_shape(PyObject* self, void*) {
  return guarded([&] { return py::cast(tensor_of(self).shape()).release().ptr(); });
}

PyObject* tensor_dtype(PyObject* self, void*) {
  return guarded([&] { return py::str(to_string(tensor_of(self).type())).release().ptr(); });
}

PyObject* tensor_nbytes(PyObject* self, void*) {
  return PyLong_FromSize_t(tensor_of(self).nbytes());
}

PyObject* tensor_data_ptr(PyObject* self, void*) {
  return PyLong_FromVoidPtr(const_cast<std::byte*>(tensor_of(self).data()));
}

PyMethodDef tensor_methods[] = {
  {"__dlpack__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(tensor_dlpack)),
   METH_FASTCALL | METH_KEYWORDS,
   "__dlpack__(stream=None): a DLPack capsule of this tensor (no copy)."},
  {"__dlpack_device__", tensor_dlpack_device, METH_NOARGS,
   "__dlpack_device__(): (1, 0), CPU memory."},
  {nullptr, nullptr, 0, nullptr}};

PyGetSetDef tensor_getset[] = {
  {"__array_interface__", tensor_array_interface, nullptr,
   "The NumPy array interface (version 3): numpy.asarray reads it without a copy.", nullptr},
  {"shape", tensor_shape, nullptr, "The shape, a list of ints.", nullptr},
  {"dtype", tensor_dtype, nullptr, "The element type's name (float32, int16, ...).", nullptr},
  {"nbytes", tensor_nbytes, nullptr, "Bytes of data.", nullptr},
  {"data_ptr", tensor_data_ptr, nullptr, "The address of the first byte.", nullptr},
  {nullptr, nullptr, nullptr, nullptr, nullptr}};

constexpr const char* tensor_doc = R"(An output tensor of a node.

Read it without a copy: ``numpy.asarray(t)`` (the array interface) or
``torch.from_dlpack(t)`` (DLPack). Its memory stays valid while the Tensor or
anything made from it lives; then it goes back to the node.)";

/// Makes the type (once, at import).
PyTypeObject* make_tensor_type() {
  PyType_Slot slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(tensor_dealloc)},
                         {Py_tp_repr, reinterpret_cast<void*>(tensor_repr)},
                         {Py_tp_methods, tensor_methods},
                         {Py_tp_getset, tensor_getset},
                         {Py_tp_doc, const_cast<char*>(tensor_doc)},
                         {0, nullptr}};
  PyType_Spec spec{"modelreg.Tensor", static_cast<int>(sizeof(py_tensor)), 0,
                   Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, slots};
  auto* type = PyType_FromSpec(&spec);
  if (type == nullptr)
    throw py::error_already_set();
  return reinterpret_cast<PyTypeObject*>(type);
}

/// Arrays handed out by Client.empty(): their data pointer -> the shared-memory tensor.
struct shm_arrays {
  std::mutex mutex;
  std::map<const std::byte*, std::weak_ptr<const void>> by_data;
  std::map<const std::byte*, tensor> tensors;
};

/// A dict of NumPy arrays as tensors: arrays from `Client.empty()` by
/// reference (their shared memory), others as views copied once on send.
tensor_map tensors_of(py::dict inputs) {
  tensor_map in;
  for (auto item : inputs) {
    Py_ssize_t length = 0;
    const char* utf8 = PyUnicode_Check(item.first.ptr())
                         ? PyUnicode_AsUTF8AndSize(item.first.ptr(), &length)
                         : nullptr;
    auto name = utf8 != nullptr ? std::string{utf8, static_cast<size_t>(length)}
                                : py::str(item.first).cast<std::string>();
    if (!py::isinstance<py::array>(item.second))
      throw py::type_error("input '" + name + "' must be a NumPy array");
    auto arr = py::reinterpret_borrow<py::array>(item.second);
    if (!(arr.flags() & py::array::c_style))
      throw py::value_error("input '" + name + "' is not C-contiguous (use numpy.ascontiguousarray)");
    auto type = dtype_of_array(arr);
    tensor_layout layout;
    layout.type = type;
    for (py::ssize_t i = 0; i < arr.ndim(); ++i)
      layout.shape.push_back(arr.shape(i));
    // An array from empty(): its shared-memory tensor goes by reference.
    if (py::isinstance<py::capsule>(arr.base())) {
      auto cap = py::reinterpret_borrow<py::capsule>(arr.base());
      if (cap.name() != nullptr && std::strcmp(cap.name(), "modelreg.tensor") == 0) {
        auto* t = cap.get_pointer<tensor>();
        auto view = tensor::wrap(t->owner(), t->storage_base(), t->storage_capacity(),
                                 tensor_layout{type, layout.shape, {},
                                               static_cast<size_t>(static_cast<const std::byte*>(arr.data()) - t->storage_base())},
                                 true);
        if (!view)
          raise(view.error());
        in[name] = *view;
        continue;
      }
    }
    // An ordinary array: viewed here, copied into shared memory once on send.
    auto owner = std::shared_ptr<const void>(new gil_object(arr), [](const void* p) {
      delete static_cast<const gil_object*>(p);
    });
    auto view = tensor::wrap(owner, static_cast<const std::byte*>(arr.data()),
                             static_cast<size_t>(arr.nbytes()), layout);
    if (!view)
      raise(view.error());
    in[name] = *view;
  }
  return in;
}

/// NumPy's number for a dtype.
int numpy_type_of(dtype t) {
  using api = py::detail::npy_api;
  switch (t) {
    case dtype::f16: return 23; // NPY_HALF (pybind11 names no constant for it)
    case dtype::f32: return api::NPY_FLOAT_;
    case dtype::f64: return api::NPY_DOUBLE_;
    case dtype::i8: return api::NPY_BYTE_;
    case dtype::i16: return api::NPY_SHORT_;
    case dtype::i32: return api::NPY_INT_;
    case dtype::i64: return api::NPY_LONG_; // 64 bits on Linux
    case dtype::u8: return api::NPY_UBYTE_;
    case dtype::u16: return api::NPY_USHORT_;
    case dtype::u32: return api::NPY_UINT_;
    case dtype::u64: return api::NPY_ULONG_;
    case dtype::boolean: return api::NPY_BOOL_;
  }
  throw py::type_error("no NumPy type for " + to_string(t));
}

/// A read-only NumPy array over `t`'s memory (no copy); its base is a
/// Tensor, which keeps the memory alive (a new reference).
PyObject* new_array(const tensor& t) {
  constexpr size_t max_rank = 32; // NPY_MAXDIMS
  if (t.rank() > max_rank)
    throw py::value_error("a tensor of rank " + std::to_string(t.rank()) +
                          " has no NumPy array (at most 32 dimensions)");
  auto base = py::reinterpret_steal<py::object>(new_tensor(t));
  if (!base)
    throw py::error_already_set();
  auto& api = py::detail::npy_api::get();
  auto* descr = api.PyArray_DescrFromType_(numpy_type_of(t.type()));
  if (descr == nullptr)
    throw py::error_already_set();
  std::array<Py_intptr_t, max_rank> shape{}, strides{};
  auto item = static_cast<Py_intptr_t>(itemsize(t.type()));
  for (size_t i = 0; i < t.rank(); ++i) {
    shape[i] = static_cast<Py_intptr_t>(t.shape()[i]);
    strides[i] = static_cast<Py_intptr_t>(t.strides()[i]) * item;
  }
  // Flags 0: not writeable (the worker's memory); NumPy works out contiguity.
  auto* array = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, static_cast<int>(t.rank()),
                                          shape.data(), strides.data(),
                                          const_cast<std::byte*>(t.data()), 0, nullptr);
  if (array == nullptr)
    throw py::error_already_set();
  if (api.PyArray_SetBaseObject_(array, base.release().ptr()) < 0) { // takes the reference
    Py_DECREF(array);
    throw py::error_already_set();
  }
  return array;
}

/// A node's outputs as Python sees them: a dict of Tensor, or with
/// `as_numpy` of read-only NumPy arrays (each with its Tensor as base).
py::dict outputs_dict(const tensor_map& out, bool as_numpy = false) {
  py::dict result;
  for (const auto& [name, t] : out) {
    auto value = py::reinterpret_steal<py::object>(as_numpy ? new_array(t) : new_tensor(t));
    if (!value)
      throw py::error_already_set();
    if (PyDict_SetItemString(result.ptr(), name.c_str(), value.ptr()) != 0)
      throw py::error_already_set();
  }
  return result;
}

/// A streaming session of a Client (Python's Stream): chunks in, partial
/// results out, then the final one.
class stream_wrapper {
public:
  stream_wrapper(std::shared_ptr<runtime> rt, blocking_session s)
    : rt_(std::move(rt)), session_(std::move(s)) {}
  stream_wrapper(stream_wrapper&&) noexcept = default;
  stream_wrapper& operator=(stream_wrapper&&) noexcept = default;
  ~stream_wrapper() {
    // A dropped stream frees its instance (without the GIL: it sends).
    released([&] { session_.cancel(); });
  }

  py::dict push(py::dict chunk, double timeout_s, bool as_numpy) {
    auto in = tensors_of(chunk);
    return outputs_dict(without_gil([&] {
                          auto r = session_.push(in, timeout(timeout_s));
                          in.clear();
                          return r;
                        }),
                        as_numpy);
  }

  py::dict finish(double timeout_s, bool as_numpy) {
    return outputs_dict(without_gil([&] { return session_.finish(timeout(timeout_s)); }),
                        as_numpy);
  }

  void cancel() {
    released([&] { session_.cancel(); });
  }

  bool open() const { return session_.open(); }
  uint64_t id() const { return session_.id(); }

private:
  static caf::timespan timeout(double seconds) {
    if (!(seconds > 0))
      return timeouts::request;
    return std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>{seconds});
  }

  std::shared_ptr<runtime> rt_; // the actor system the link lives in
  blocking_session session_;
};

class client_wrapper {
public:
  client_wrapper(const std::string& uri, const tls_files& tls) {
    bool tcp = uri.rfind("tcp://", 0) == 0;
    if (tls.any() && !tcp)
      throw py::value_error("TLS files are for tcp:// nodes, not " + uri);
    if (tls.any())
      if (auto why = check_tls(tls); !why.empty())
        throw error{"invalid_argument", why};
    reg_ = without_gil([&] {
      rt_ = get_runtime(uri, tls);
      return connect(*rt_->sys, uri);
    });
    released([this] { caller_.emplace(*rt_->sys, reg_); });
    std::lock_guard guard{live_mutex};
    live_clients.insert(this);
  }
  ~client_wrapper() {
    {
      std::lock_guard guard{live_mutex};
      live_clients.erase(this);
    }
    close();
  }

  void close() {
    std::map<std::string, model_handle> held;
    {
      std::lock_guard guard{mutex_};
      held.swap(loaded_);
    }
    for (auto& [k, h] : held)
      h.release();
    registry_actor reg;
    std::vector<std::unique_ptr<caf::scoped_actor>> callers;
    {
      std::lock_guard guard{callers_mutex_};
      std::swap(reg, reg_);
      callers.swap(idle_callers_);
    }
    callers.clear();
    if (reg)
      caf::anon_send(reg, shutdown_atom::value);
  }

  /// How long a request may take when the caller gives no timeout.
  static constexpr std::chrono::seconds default_timeout{300};

  template <class T, class... Ts>
  T ask(Ts&&... xs) {
    return ask_within<T>(default_timeout, std::forward<Ts>(xs)...);
  }

  template <class T, class... Ts>
  T ask_within(caf::timespan timeout, Ts&&... xs) {
    auto reg = current();
    return without_gil([&] {
      caf::expected<T> out{caf::error{}};
      auto self = take_caller();
      (*self)->request(reg, timeout, std::forward<Ts>(xs)...)
        .receive([&](T& x) { out = std::move(x); }, [&](caf::error& e) { out = std::move(e); });
      // A caller whose request failed may still get a late answer: it is
      // not reused.
      if (out)
        give_back(std::move(self));
      return out;
    });
  }

  /// The node's proxy; `shutting_down` once closed.
  registry_actor current() {
    std::lock_guard guard{callers_mutex_};
    if (!reg_)
      throw error{"shutting_down", "the client was closed"};
    return reg_;
  }

  /// A blocking actor to make one request with (reused: creating and
  /// destroying one costs about 20 us, a sixth of a small round trip).
  std::unique_ptr<caf::scoped_actor> take_caller() {
    {
      std::lock_guard guard{callers_mutex_};
      if (!idle_callers_.empty()) {
        auto self = std::move(idle_callers_.back());
        idle_callers_.pop_back();
        return self;
      }
    }
    return std::make_unique<caf::scoped_actor>(*rt_->sys);
  }

  void give_back(std::unique_ptr<caf::scoped_actor> self) {
    std::lock_guard guard{callers_mutex_};
    if (reg_ && idle_callers_.size() < max_idle_callers)
      idle_callers_.push_back(std::move(self));
  }

  std::string status() {
    auto reg = current();
    return without_gil([&] { return remote_status_json(*rt_->sys, reg); });
  }

  /// Loads catalog model `name` and keeps a lease on it for this client.
  uint64_t load(const std::string& name, double timeout_s) {
    auto h = ask_within<model_handle>(timeout_of(timeout_s), get_or_load_atom::value, name,
                                      model_spec{});
    auto bytes = h.memory_bytes();
    std::lock_guard guard{mutex_};
    loaded_[name] = std::move(h);
    return bytes;
  }

  py::tuple unload(const std::string& name) {
    {
      std::lock_guard guard{mutex_};
      if (auto i = loaded_.find(name); i != loaded_.end()) {
        i->second.release();
        loaded_.erase(i);
      }
    }
    auto rep = ask<eviction_report>(unload_atom::value, name);
    return py::make_tuple(rep.count, rep.freed_bytes);
  }

  /// A NumPy array living in shared memory: input written into it crosses
  /// to the worker with no copy.
  py::array empty(std::vector<int64_t> shape, py::object dtype_like) {
    auto np = py::module_::import("numpy");
    py::array probe = np.attr("empty")(0, dtype_like);
    auto type = dtype_of_array(probe);
    auto reg = current();
    auto* holder = new tensor(without_gil([&] { return allocate_input(*rt_->sys, reg, type, shape); }));
    py::capsule base(holder, "modelreg.tensor", [](PyObject* c) {
      delete static_cast<tensor*>(PyCapsule_GetPointer(c, "modelreg.tensor"));
    });
    std::vector<py::ssize_t> dims(shape.begin(), shape.end());
    return py::array(probe.dtype(), dims, static_cast<void*>(holder->mutable_data()), base);
  }

  /// Seconds from Python (<= 0: the default) as a CAF timeout.
  static caf::timespan timeout_of(double seconds) {
    if (!(seconds > 0))
      return default_timeout;
    return std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>{seconds});
  }

  /// Seconds from Python: None (the default) or a number.
  static double seconds_of(py::handle timeout) {
    if (timeout.is_none())
      return 0;
    auto seconds = PyFloat_AsDouble(timeout.ptr()); // numbers and __float__
    if (seconds == -1.0 && PyErr_Occurred())
      throw py::error_already_set();
    return seconds;
  }

  /// Client.infer, bound directly (no Python frame in between: from an idle
  /// process each one costs microseconds of cold caches).
  py::dict infer(const std::string& model, py::handle inputs, py::handle timeout, bool as_numpy) {
    if (!PyDict_Check(inputs.ptr()))
      throw py::type_error("inputs must be a dict of name -> numpy array");
    auto timeout_s = seconds_of(timeout);
    // Loads on first use and keeps a lease: the node then routes this
    // client's requests straight to the model actor.
    bool held;
    {
      std::lock_guard guard{mutex_};
      auto i = loaded_.find(model);
      held = i != loaded_.end() && i->second.valid();
    }
    if (!held)
      load(model, timeout_s);
    tensor_map in = tensors_of(py::reinterpret_borrow<py::dict>(inputs));
    current(); // shutting_down once closed
    // On a Unix link this thread sends the request itself and is woken by
    // the connection's thread (blocking_client).
    auto out = without_gil([&] {
      auto start = std::chrono::steady_clock::now();
      auto r = caller_->infer(model, in, timeout_of(timeout_s));
      // What this process waited for the node, for counters(): the rest of
      // a call's time is this wrapper's and Python's own work.
      infer_wait_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now() - start)
                          .count();
      infer_calls_ += 1;
      in.clear(); // ordinary arrays' views are dropped here, without the GIL
      return r;
    });
    return outputs_dict(out, as_numpy);
  }

  /// For `modelreg bench python`: `n` round trips of `inputs` to `model`
  /// made by C++ on this thread, through the same connection and threads as
  /// infer(), each after `gap_us` microseconds idle. Python's calls are
  /// compared with these: the same process, so the same placement of its
  /// threads. Their times (microseconds) and the last answer.
  py::tuple cpp_round_trips(const std::string& model, py::dict inputs, int n, int64_t gap_us) {
    tensor_map in = tensors_of(inputs);
    current(); // shutting_down once closed
    std::vector<int64_t> lat;
    auto last = without_gil([&]() -> caf::expected<tensor_map> {
      caf::expected<tensor_map> out{tensor_map{}};
      for (int i = 0; i < n && out; ++i) {
        if (gap_us > 0)
          std::this_thread::sleep_for(std::chrono::microseconds{gap_us});
        auto start = std::chrono::steady_clock::now();
        tensor_map call_inputs = in; // built per call, as a C++ caller does
        out = caller_->infer(model, call_inputs, default_timeout);
        lat.push_back(std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::steady_clock::now() - start)
                        .count());
      }
      in.clear();
      return out;
    });
    return py::make_tuple(lat, outputs_dict(last));
  }

  stream_wrapper open_session(const std::string& model, double wait_s, double timeout_s) {
    current(); // shutting_down once closed
    auto wait = std::chrono::milliseconds{static_cast<int64_t>(std::max(0.0, wait_s) * 1000)};
    return stream_wrapper{
      rt_, without_gil([&] { return caller_->open_session(model, wait, timeout_of(timeout_s)); })};
  }

  py::dict counters() {
    auto reg = current();
    auto s = without_gil([&] { return stats_of(*rt_->sys, reg); });
    py::dict d;
    d["connected"] = s.connected;
    d["shared_memory"] = s.shared_memory;
    d["zero_copy_tensors"] = s.zero_copy_tensors;
    d["copied_bytes"] = s.copied_bytes;
    d["infer_calls"] = infer_calls_.load();
    d["infer_wait_s"] = static_cast<double>(infer_wait_ns_.load()) * 1e-9;
    return d;
  }

private:
  static constexpr size_t max_idle_callers = 8;

  std::shared_ptr<runtime> rt_;
  registry_actor reg_; // null once closed (guarded by callers_mutex_ after construction)
  std::atomic<uint64_t> infer_calls_{0};
  std::atomic<int64_t> infer_wait_ns_{0};
  std::mutex callers_mutex_;
  std::vector<std::unique_ptr<caf::scoped_actor>> idle_callers_;
  std::optional<blocking_client> caller_; // infer's path
  std::mutex mutex_;
  std::map<std::string, model_handle> loaded_;
};

/// At interpreter exit (atexit): handles, registries, clients (their leases
/// go back to the node), then the actor systems, all with the GIL released.
/// An actor system a live client object still refers to is stopped when
/// that object goes, if ever; the process exits either way.
void shutdown() {
  std::vector<handle_wrapper*> handles;
  std::vector<registry_wrapper*> registries;
  std::vector<client_wrapper*> clients;
  std::map<std::string, std::shared_ptr<runtime>> runtimes;
  {
    std::lock_guard guard{live_mutex};
    handles.assign(live_handles.begin(), live_handles.end());
    registries.assign(live_registries.begin(), live_registries.end());
    clients.assign(live_clients.begin(), live_clients.end());
    runtimes.swap(the_runtimes);
  }
  released([&] {
    gate().close();
    for (auto* h : handles)
      h->drop();
    for (auto* r : registries)
      r->close();
    for (auto* c : clients)
      c->close();
    runtimes.clear();
  });
}

/// Client.infer(model, inputs, timeout=None) as a plain CPython method
/// (vectorcall): the call a pipeline makes per frame goes through no Python
/// frame and not through pybind11's general dispatcher, which from an idle
/// process costs microseconds of cold caches (docs/python.md).
PyObject* client_infer(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
  // model, inputs and timeout by position or keyword; as_numpy by keyword.
  static constexpr const char* names[] = {"model", "inputs", "timeout", "as_numpy"};
  PyObject* given[4] = {nullptr, nullptr, nullptr, nullptr};
  if (nargs > 3) {
    PyErr_Format(PyExc_TypeError,
                 "infer() takes at most 3 positional arguments (%zd given); as_numpy is "
                 "a keyword",
                 nargs);
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < nargs; ++i)
    given[i] = args[i];
  auto nkw = kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t k = 0; k < nkw; ++k) {
    auto* key = PyTuple_GET_ITEM(kwnames, k);
    int j = 0;
    while (j < 4 && PyUnicode_CompareWithASCIIString(key, names[j]) != 0)
      ++j;
    if (j == 4) {
      PyErr_Format(PyExc_TypeError, "infer() got an unexpected keyword argument '%U'", key);
      return nullptr;
    }
    if (given[j] != nullptr) {
      PyErr_Format(PyExc_TypeError, "infer() got multiple values for argument '%s'", names[j]);
      return nullptr;
    }
    given[j] = args[nargs + k];
  }
  for (int j = 0; j < 2; ++j)
    if (given[j] == nullptr) {
      PyErr_Format(PyExc_TypeError, "infer() missing required argument '%s'", names[j]);
      return nullptr;
    }
  if (!PyUnicode_Check(given[0])) {
    PyErr_SetString(PyExc_TypeError, "model must be a str (a catalog name)");
    return nullptr;
  }
  Py_ssize_t length = 0;
  const char* model = PyUnicode_AsUTF8AndSize(given[0], &length);
  if (model == nullptr)
    return nullptr;
  int as_numpy = given[3] != nullptr ? PyObject_IsTrue(given[3]) : 0;
  if (as_numpy < 0)
    return nullptr;
  return guarded([&] {
    auto& client = py::cast<client_wrapper&>(py::handle(self));
    return client
      .infer(std::string{model, static_cast<size_t>(length)}, py::handle(given[1]),
             py::handle(given[2] != nullptr ? given[2] : Py_None), as_numpy != 0)
      .release()
      .ptr();
  });
}

PyMethodDef client_infer_def{
  "infer", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(client_infer)),
  METH_FASTCALL | METH_KEYWORDS,
  R"(infer($self, model, inputs, timeout=None, *, as_numpy=False)
--

Runs catalog model ``model`` on ``inputs`` (dict of NumPy arrays),
loading it on first use (this client then holds a lease on it).

``timeout``: seconds to wait for the answer (default 300); past it,
``ModelRegError`` with code ``timeout`` (the node may still finish
the request; its answer is dropped).

Arrays from ``empty()`` cross by reference; other C-contiguous arrays
are copied into shared memory once. Returns a dict of ``Tensor``: the
worker's memory, read-only, for ``numpy.asarray`` / ``numpy.from_dlpack``
/ ``torch.from_dlpack`` without a copy. With ``as_numpy=True``, a dict of
read-only NumPy arrays over the same memory instead (each one's ``base`` is
its ``Tensor``): the cheapest way to NumPy, with no ``from_dlpack`` call.)"};

} // namespace

} // namespace modelreg::python

PYBIND11_MODULE(_modelreg, m) {
  using namespace modelreg::python;
  m.doc() = "modelreg: load each model once and share it (C++ core)";
  m.attr("__version__") = MODELREG_VERSION;
  static py::exception<error> base_exc(m, "ModelRegError");
  static py::exception<load_error> load_exc(m, "LoadError", base_exc.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p)
        std::rethrow_exception(p);
    } catch (const load_error& e) {
      py::object exc = py::handle(load_exc.ptr())(e.what());
      exc.attr("code") = e.code;
      PyErr_SetObject(load_exc.ptr(), exc.ptr());
    } catch (const error& e) {
      py::object exc = py::handle(base_exc.ptr())(e.what());
      exc.attr("code") = e.code;
      PyErr_SetObject(base_exc.ptr(), exc.ptr());
    }
  });
  py::class_<handle_wrapper>(m, "Handle")
    .def_property_readonly("model", &handle_wrapper::model)
    .def_property_readonly("key", &handle_wrapper::key)
    .def_property_readonly("generation", &handle_wrapper::generation)
    .def_property_readonly("memory_bytes", &handle_wrapper::memory_bytes)
    .def_property_readonly("valid", &handle_wrapper::valid)
    .def("release", &handle_wrapper::release);
  py::class_<registry_wrapper>(m, "Registry")
    .def(py::init<double, uint64_t, size_t, size_t, double>(), py::arg("ttl") = 30.0,
         py::arg("max_memory_bytes") = 0, py::arg("max_models") = 0,
         py::arg("max_concurrent_loads") = 2, py::arg("load_timeout") = 0.0)
    .def("get_or_load", &registry_wrapper::get_or_load, py::arg("key"), py::arg("loader"))
    .def("metrics_json", &registry_wrapper::metrics_json)
    .def("evict_expired", &registry_wrapper::evict_expired)
    .def("unload", &registry_wrapper::unload)
    .def("close", [](registry_wrapper& r) { released([&] { r.close(); }); });
  tensor_type = make_tensor_type();
  m.attr("Tensor") = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(tensor_type));
  py::class_<stream_wrapper>(m, "Stream")
    .def("push", &stream_wrapper::push, py::arg("chunk"), py::arg("timeout") = 0.0,
         py::arg("as_numpy") = false)
    .def("finish", &stream_wrapper::finish, py::arg("timeout") = 0.0, py::arg("as_numpy") = false)
    .def("cancel", &stream_wrapper::cancel)
    .def_property_readonly("open", &stream_wrapper::open)
    .def_property_readonly("id", &stream_wrapper::id);
  auto client_type = py::class_<client_wrapper>(m, "Client", "The C++ side of modelreg.Client (which derives from it).")
    .def(py::init([](const std::string& uri, const std::string& cert, const std::string& key,
                     const std::string& ca) {
           return std::make_unique<client_wrapper>(uri, modelreg::tls_files{cert, key, ca});
         }),
         py::arg("uri"), py::arg("tls_cert") = "", py::arg("tls_key") = "", py::arg("tls_ca") = "")
    .def("_status_json", &client_wrapper::status)
    .def("_load", &client_wrapper::load, py::arg("name"), py::arg("timeout") = 0.0)
    .def("_unload", &client_wrapper::unload)
    .def("_empty", &client_wrapper::empty)
    .def("_open_session", &client_wrapper::open_session, py::arg("model"), py::arg("wait"),
         py::arg("timeout"))
    .def("_counters", &client_wrapper::counters)
    .def("_cpp_round_trips", &client_wrapper::cpp_round_trips, py::arg("model"),
         py::arg("inputs"), py::arg("n"), py::arg("gap_us"))
    .def("_close", &client_wrapper::close);
  client_type.attr("infer") = py::reinterpret_steal<py::object>(
    PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(client_type.ptr()), &client_infer_def));
  m.def("_shutdown", &shutdown);
  m.def("_set_loader_runner", [](py::object runner) { loader_runner = runner.release().ptr(); });
  m.def("default_socket_path", &modelreg::default_socket_path);
}
