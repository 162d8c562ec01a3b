#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <ffi.h>
#include <zlib.h>

/* zlib_version() -> the version of the zlib loaded (libz.so.1, package zlib1g). */
static PyObject *
pwtest_zlib_version(PyObject *self, PyObject *args)
{
    return PyUnicode_FromString(zlibVersion());
}

/* ffi_uint32_size() -> 4, read from libffi's ffi_type_uint32 (libffi.so.8, package libffi8). */
static PyObject *
pwtest_ffi_uint32_size(PyObject *self, PyObject *args)
{
    return PyLong_FromSize_t(ffi_type_uint32.size);
}

static PyMethodDef pwtest_methods[] = {
    {"zlib_version", pwtest_zlib_version, METH_NOARGS, "the version of the zlib loaded"},
    {"ffi_uint32_size", pwtest_ffi_uint32_size, METH_NOARGS, "libffi's size of a uint32"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef pwtest_module = {
    PyModuleDef_HEAD_INIT, "_clibs", "C half of pwtest_clibs", -1, pwtest_methods
};

PyMODINIT_FUNC
PyInit__clibs(void)
{
    return PyModule_Create(&pwtest_module);
}
