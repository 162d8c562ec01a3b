#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* add(a, b) -> a + b, for two ints that fit in a C long. */
static PyObject *
pwtest_add(PyObject *self, PyObject *args)
{
    long a, b;

    if (!PyArg_ParseTuple(args, "ll:add", &a, &b))
        return NULL;
    return PyLong_FromLong(a + b);
}

static PyMethodDef pwtest_methods[] = {
    {"add", pwtest_add, METH_VARARGS, "add(a, b) -> the sum of two ints"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef pwtest_module = {
    PyModuleDef_HEAD_INIT, "_add", "C half of pwtest_cext", -1, pwtest_methods
};

PyMODINIT_FUNC
PyInit__add(void)
{
    return PyModule_Create(&pwtest_module);
}
