// Python module stub: importing curvext._C loads the shared library, whose static
// initialisers register the ops with the dispatcher (see curvext.cpp). Nothing is bound here.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
