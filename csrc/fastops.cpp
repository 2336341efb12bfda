// The Python module fastops._C. Importing it runs the static TORCH_LIBRARY
// registrations of every op; the module itself defines nothing.

#include <Python.h>

extern "C" {

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",     // name
      nullptr,  // doc
      -1,       // size
      nullptr,  // methods
  };
  return PyModule_Create(&module_def);
}

}
