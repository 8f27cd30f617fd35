// Ctrl-C during a computation that runs with the GIL released.
#pragma once

#include <atomic>
#include <thread>

#include "bindings.h"

namespace natgrad {
namespace python {

// Python's signal handlers run only in the main thread holding the GIL: the thread that released the GIL
// for a computation (OpenMP's thread 0 of the team it starts) takes it back for a moment before each chunk
// of work to let them run. A KeyboardInterrupt they raise becomes a stop request.
class SignalWatch {
 public:
  void arm() {
    owner_ = std::this_thread::get_id();
    stopped_ = false;
  }
  bool stop_requested() {
    if (stopped_) return true;
    if (std::this_thread::get_id() != owner_) return false;
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      PyErr_Clear();  // raised again, as natgrad::Interrupted's translation, when the call returns
      stopped_ = true;
    }
    return stopped_;
  }
  bool stopped() const { return stopped_; }

 private:
  std::thread::id owner_;
  std::atomic<bool> stopped_{false};
};

}  // namespace python
}  // namespace natgrad
