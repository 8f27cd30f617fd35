// natgrad._core: the extension module. The library's exceptions become Python's: std::invalid_argument a
// ValueError (pybind11's own translation), natgrad::Interrupted (a Ctrl-C seen between chunks of work) a
// KeyboardInterrupt, any other a RuntimeError, each with the library's message.
#include <natgrad/core/interrupted.h>
#include <natgrad/core/threads.h>

#include "bindings.h"

namespace natgrad {
namespace python {

PYBIND11_MODULE(_core, m) {
  m.doc() = "natgrad's C++ library: models, the Fisher operator and its solves (use the natgrad package)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Interrupted& e) {
      PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    }
  });
  m.def("set_num_threads", &set_num_threads, py::arg("threads"),
        "natgrad's library-wide thread count (0: all cores)");
  m.def("num_threads", &num_threads, "natgrad's library-wide thread count");
  bind_model(m);
  bind_fisher(m);
  bind_optimizers(m);
}

}  // namespace python
}  // namespace natgrad
