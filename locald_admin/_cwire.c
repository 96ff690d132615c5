/* Reading D-Bus values in C: locald_admin._cwire.
 *
 * The same reader as wire._read (the reference; read it first), decision
 * for decision and error message for error message, so that the
 * differential tests (tests/test_wire_differential.py) can hold the two to
 * the same result on any bytes; fields() is wire._fields likewise.  What
 * stays in Python: signatures (a variant's signature and a 'g' value are
 * parsed by the functions handed to setup(), which are wire's own), the
 * name checks of header fields (wire's check_* functions, called from
 * here), the rules on the header as a whole, framing and everything about
 * encoding.  Why C at all: the mechanism reads five
 * messages per request, and reading them in Python cost about 45 us of its
 * CPU per request (docs/architecture.md, "The bus layer").
 *
 * The defences, each where the reference has it:
 *   - every length read from the wire is checked against the end of its
 *     container (the enclosing array, or the message) before anything is
 *     sliced, allocated or looped over; positions are Py_ssize_t (64 bits)
 *     and a length is at most 2**32 - 1, so no sum here overflows;
 *   - padding must be present and zero; a string must be NUL-terminated,
 *     hold no NUL and be UTF-8 (Python's strict decoder, the reference's);
 *   - nesting is bounded by `level` (64 containers, as libdbus); recursion
 *     goes one level per container, so the C stack is bounded too;
 *   - a type is one of the reference's parsed forms (a one-character str,
 *     ("a", element), ("(", fields), ("{", key, value)); anything else is
 *     refused with TypeError (only our own code passes types).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define DEPTH 64                         /* wire._DEPTH */
#define MAX_ARRAY ((Py_ssize_t)1 << 26)  /* wire._MAX_ARRAY */

/* Handed over by wire.py: the error class, the Variant class, the two
 * signature functions (wire._one_type(sig, False), wire._parse(sig, False))
 * and the big-endian byte order object (wire._BIG). */
static PyObject *WireError, *VariantType, *OneType, *Parse, *BigOrder;
/* wire._FIELDS: header field code -> (Message attribute, type code, name check or None). */
static PyObject *Fields;

typedef struct {
    const unsigned char *b;
    int big;  /* big-endian message */
} Buf;

static PyObject *read_value(const Buf *, Py_ssize_t *, Py_ssize_t, PyObject *, int);

static PyObject *
fail(const char *format, Py_ssize_t pos)
{
    PyErr_Format(WireError, format, pos);
    return NULL;
}

static uint16_t
get16(const Buf *buf, Py_ssize_t pos)
{
    const unsigned char *p = buf->b + pos;
    return buf->big ? (uint16_t)(p[0] << 8 | p[1]) : (uint16_t)(p[1] << 8 | p[0]);
}

static uint32_t
get32(const Buf *buf, Py_ssize_t pos)
{
    const unsigned char *p = buf->b + pos;
    if (buf->big)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint64_t
get64(const Buf *buf, Py_ssize_t pos)
{
    uint64_t hi = get32(buf, buf->big ? pos : pos + 4), lo = get32(buf, buf->big ? pos + 4 : pos);
    return hi << 32 | lo;
}

/* wire._pad: the position after the padding to `align` at `pos` (present, zero). */
static int
pad(const Buf *buf, Py_ssize_t *pos, Py_ssize_t align, Py_ssize_t end)
{
    Py_ssize_t at = *pos, next = (at + align - 1) & -align;
    if (next == at)
        return 0;
    if (next > end) {
        fail("message truncated at offset %zd", at);
        return -1;
    }
    for (Py_ssize_t i = at; i < next; i++)
        if (buf->b[i]) {
            fail("non-zero alignment padding at offset %zd", at);
            return -1;
        }
    *pos = next;
    return 0;
}

/* wire._string: the str of `length` bytes at `pos`; *after: past its NUL. */
static PyObject *
string(const Buf *buf, Py_ssize_t pos, Py_ssize_t length, Py_ssize_t end, Py_ssize_t *after)
{
    Py_ssize_t stop = pos + length;
    if (stop >= end)  /* the terminating NUL must be present too */
        return fail("string at offset %zd runs past its container", pos);
    if (buf->b[stop] != 0)
        return fail("string at offset %zd is not NUL-terminated", pos);
    if (memchr(buf->b + pos, 0, (size_t)length) != NULL)
        return fail("string at offset %zd contains a NUL", pos);
    PyObject *s = PyUnicode_DecodeUTF8((const char *)buf->b + pos, length, "strict");
    if (s == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return NULL;  /* MemoryError */
        PyErr_Clear();
        return fail("string at offset %zd is not valid UTF-8", pos);
    }
    *after = stop + 1;
    return s;
}

/* wire._read_signature */
static PyObject *
signature(const Buf *buf, Py_ssize_t *pos, Py_ssize_t end)
{
    if (*pos >= end)
        return fail("message truncated at offset %zd", *pos);
    return string(buf, *pos + 1, buf->b[*pos], end, pos);
}

/* wire._PATH_RE: "/" or ("/" [A-Za-z0-9_]+)+, on the bytes (a valid path is ASCII). */
static int
is_path(const unsigned char *p, Py_ssize_t n)
{
    if (n == 0 || p[0] != '/')
        return 0;
    if (n == 1)
        return 1;
    if (p[n - 1] == '/')
        return 0;
    for (Py_ssize_t i = 1; i < n; i++) {
        unsigned char c = p[i];
        if (c == '/') {
            if (p[i - 1] == '/')
                return 0;
        } else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            return 0;
        }
    }
    return 1;
}

/* The size (== alignment) of fixed type code c, 0 if c is not fixed. */
static Py_ssize_t
fixed_size(int c)
{
    switch (c) {
    case 'y': return 1;
    case 'n': case 'q': return 2;
    case 'b': case 'i': case 'u': case 'h': return 4;
    case 'x': case 't': case 'd': return 8;
    default: return 0;
    }
}

/* wire._ALIGN */
static Py_ssize_t
align_of(int c)
{
    switch (c) {
    case 'y': case 'g': case 'v': return 1;
    case 'n': case 'q': return 2;
    case 'b': case 'i': case 'u': case 'h': case 's': case 'o': case 'a': return 4;
    case 'x': case 't': case 'd': case '(': case '{': return 8;
    default: return 0;
    }
}

/* The type code of a parsed type (its first character), -1 with TypeError if it is not one. */
static int
code_of(PyObject *t)
{
    PyObject *s = PyTuple_Check(t) && PyTuple_GET_SIZE(t) >= 2 ? PyTuple_GET_ITEM(t, 0) : t;
    if (!PyUnicode_Check(s) || PyUnicode_GET_LENGTH(s) != 1) {
        PyErr_SetString(PyExc_TypeError, "not a parsed D-Bus type");
        return -1;
    }
    Py_UCS4 c = PyUnicode_READ_CHAR(s, 0);
    if (c > 127 || align_of((int)c) == 0) {
        PyErr_SetString(PyExc_TypeError, "not a parsed D-Bus type");
        return -1;
    }
    return (int)c;
}

/* One fixed value of type c at pos (in bounds, aligned). */
static PyObject *
fixed_value(const Buf *buf, int c, Py_ssize_t pos)
{
    switch (c) {
    case 'y': return PyLong_FromLong(buf->b[pos]);
    case 'n': return PyLong_FromLong((int16_t)get16(buf, pos));
    case 'q': return PyLong_FromLong(get16(buf, pos));
    case 'i': return PyLong_FromLong((int32_t)get32(buf, pos));
    case 'u': case 'h': case 'b': return PyLong_FromUnsignedLong(get32(buf, pos));
    case 'x': return PyLong_FromLongLong((int64_t)get64(buf, pos));
    case 't': return PyLong_FromUnsignedLongLong(get64(buf, pos));
    case 'd': {
        uint64_t bits = get64(buf, pos);
        double d;
        memcpy(&d, &bits, sizeof d);
        return PyFloat_FromDouble(d);
    }
    }
    PyErr_SetString(PyExc_TypeError, "not a fixed type");
    return NULL;
}

static PyObject *
read_basic(const Buf *buf, Py_ssize_t *pos, Py_ssize_t end, int c, int level)
{
    Py_ssize_t at = *pos;
    if (c == 's' || c == 'o') {
        if ((at & 3) && pad(buf, &at, 4, end) < 0)
            return NULL;
        if (at + 4 > end)
            return fail("message truncated at offset %zd", at);
        PyObject *value = string(buf, at + 4, get32(buf, at), end, pos);
        if (value != NULL && c == 'o' && !is_path(buf->b + at + 4, *pos - at - 5)) {
            Py_DECREF(value);
            return fail("object path at offset %zd is not valid", at);
        }
        return value;
    }
    Py_ssize_t size = fixed_size(c);
    if (size) {
        if ((at & (size - 1)) && pad(buf, &at, size, end) < 0)
            return NULL;
        if (at + size > end)
            return fail("message truncated at offset %zd", at);
        if (c == 'b') {
            uint32_t v = get32(buf, at);
            if (v > 1)
                return fail("boolean at offset %zd is neither 0 nor 1", at);
            *pos = at + size;
            return PyBool_FromLong(v);
        }
        PyObject *value = fixed_value(buf, c, at);
        if (value != NULL)
            *pos = at + size;
        return value;
    }
    if (c == 'g') {
        PyObject *value = signature(buf, pos, end);
        if (value == NULL)
            return NULL;
        PyObject *ok = PyObject_CallFunctionObjArgs(Parse, value, Py_False, NULL);
        if (ok == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        Py_DECREF(ok);
        return value;
    }
    /* a variant: its signature, then its value */
    if (level >= DEPTH)
        return fail("values nested deeper than 64 at offset %zd", at);
    PyObject *sig = signature(buf, pos, end);
    if (sig == NULL)
        return NULL;
    PyObject *inner = PyObject_CallFunctionObjArgs(OneType, sig, Py_False, NULL);
    PyObject *value = inner == NULL ? NULL : read_value(buf, pos, end, inner, level + 1);
    Py_XDECREF(inner);
    PyObject *variant = value == NULL ? NULL : PyObject_CallFunctionObjArgs(VariantType, sig, value, NULL);
    Py_DECREF(sig);
    Py_XDECREF(value);
    return variant;
}

static PyObject *
read_array(const Buf *buf, Py_ssize_t *pos, Py_ssize_t end, PyObject *t, int level)
{
    Py_ssize_t at = *pos;
    if (PyTuple_GET_SIZE(t) != 2) {
        PyErr_SetString(PyExc_TypeError, "not a parsed D-Bus type");
        return NULL;
    }
    if (pad(buf, &at, 4, end) < 0)
        return NULL;
    if (at + 4 > end)
        return fail("message truncated at offset %zd", at);
    Py_ssize_t length = get32(buf, at);
    PyObject *element = PyTuple_GET_ITEM(t, 1);
    int ec = code_of(element);
    if (ec < 0)
        return NULL;
    /* The padding to the first element is there even for an empty array. */
    Py_ssize_t start = at + 4;
    if (pad(buf, &start, align_of(ec), end) < 0)
        return NULL;
    Py_ssize_t stop = start + length;
    if (stop > end)  /* checked before anything is sliced or looped over */
        return fail("array at offset %zd runs past its container", at);
    if (length > MAX_ARRAY)
        return fail("array at offset %zd longer than 64 MiB", at);
    int element_is_code = PyUnicode_Check(element);
    if (element_is_code && ec == 'y') {
        *pos = stop;
        return PyBytes_FromStringAndSize((const char *)buf->b + start, length);
    }
    Py_ssize_t size = element_is_code ? fixed_size(ec) : 0;
    if (size) {  /* fixed-size elements: no recursion */
        if (length % size)
            return fail("array at offset %zd does not end on an element", at);
        Py_ssize_t n = length / size;
        if (ec == 'b')
            for (Py_ssize_t i = 0; i < n; i++)
                if (get32(buf, start + i * size) > 1)
                    return fail("boolean in array at offset %zd is neither 0 nor 1", at);
        PyObject *items = PyList_New(n);
        if (items == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *v = ec == 'b' ? PyBool_FromLong(get32(buf, start + i * size))
                                    : fixed_value(buf, ec, start + i * size);
            if (v == NULL) {
                Py_DECREF(items);
                return NULL;
            }
            PyList_SET_ITEM(items, i, v);
        }
        *pos = stop;
        return items;
    }
    if (length && level >= DEPTH)
        return fail("values nested deeper than 64 at offset %zd", at);
    Py_ssize_t p = start;
    if (ec == '{' && !element_is_code) {
        /* A dict entry is an 8-aligned (key, value) pair.  Repeated keys
         * are not invalid D-Bus: the last one wins, as in dict(). */
        if (PyTuple_GET_SIZE(element) != 3) {
            PyErr_SetString(PyExc_TypeError, "not a parsed D-Bus type");
            return NULL;
        }
        PyObject *key_type = PyTuple_GET_ITEM(element, 1), *value_type = PyTuple_GET_ITEM(element, 2);
        PyObject *result = PyDict_New();
        if (result == NULL)
            return NULL;
        while (p < stop) {
            if ((p & 7) && pad(buf, &p, 8, stop) < 0)
                goto dict_failed;
            if (level + 1 >= DEPTH) {
                fail("values nested deeper than 64 at offset %zd", p);
                goto dict_failed;
            }
            PyObject *key = read_value(buf, &p, stop, key_type, level + 2);
            if (key == NULL)
                goto dict_failed;
            PyObject *value = read_value(buf, &p, stop, value_type, level + 2);
            if (value == NULL) {
                Py_DECREF(key);
                goto dict_failed;
            }
            int r = PyDict_SetItem(result, key, value);
            Py_DECREF(key);
            Py_DECREF(value);
            if (r < 0)
                goto dict_failed;
        }
        *pos = stop;
        return result;
    dict_failed:
        Py_DECREF(result);
        return NULL;
    }
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    while (p < stop) {
        PyObject *value = read_value(buf, &p, stop, element, level + 1);
        if (value == NULL || PyList_Append(items, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(items);
            return NULL;
        }
        Py_DECREF(value);
    }
    *pos = stop;  /* every read stays below stop: p == stop here */
    return items;
}

static PyObject *
read_struct(const Buf *buf, Py_ssize_t *pos, Py_ssize_t end, PyObject *t, int level)
{
    PyObject *fields = PyTuple_GET_SIZE(t) == 2 ? PyTuple_GET_ITEM(t, 1) : NULL;
    if (fields == NULL || !PyTuple_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "not a parsed D-Bus type");
        return NULL;
    }
    if (level >= DEPTH)
        return fail("values nested deeper than 64 at offset %zd", *pos);
    Py_ssize_t p = *pos;
    if ((p & 7) && pad(buf, &p, 8, end) < 0)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    PyObject *values = PyTuple_New(n);
    if (values == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = read_value(buf, &p, end, PyTuple_GET_ITEM(fields, i), level + 1);
        if (value == NULL) {
            Py_DECREF(values);
            return NULL;
        }
        PyTuple_SET_ITEM(values, i, value);
    }
    *pos = p;
    return values;
}

/* wire._read: the value of type t at *pos, never reading at or beyond end;
 * *pos moves past it only on success. */
static PyObject *
read_value(const Buf *buf, Py_ssize_t *pos, Py_ssize_t end, PyObject *t, int level)
{
    int c = code_of(t);
    if (c < 0)
        return NULL;
    if (PyUnicode_Check(t)) {
        if (c == 'a' || c == '(' || c == '{') {
            PyErr_SetString(PyExc_TypeError, "not a parsed D-Bus type");
            return NULL;
        }
        return read_basic(buf, pos, end, c, level);
    }
    if (c == 'a')
        return read_array(buf, pos, end, t, level);
    if (c == '(')
        return read_struct(buf, pos, end, t, level);
    PyErr_SetString(PyExc_TypeError, "not a parsed D-Bus type");
    return NULL;
}

/* read(buf, pos, end, t, order, level) -> (value, position after it) */
static PyObject *
py_read(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos, end;
    PyObject *t, *order;
    int level;
    (void)self;
    if (WireError == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cwire.setup() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*nnOOi:read", &view, &pos, &end, &t, &order, &level))
        return NULL;
    PyObject *result = NULL;
    if (pos < 0 || end < pos || end > view.len || level < 0) {
        PyErr_SetString(PyExc_ValueError, "pos and end must satisfy 0 <= pos <= end <= len(buf)");
    } else {
        Buf buf = {view.buf, order == BigOrder};
        PyObject *value = read_value(&buf, &pos, end, t, level);
        if (value != NULL) {
            result = Py_BuildValue("(Nn)", value, pos);
        }
    }
    PyBuffer_Release(&view);
    return result;
}

/* fields(buf, end, order) -> {name: value}: wire._fields in C, the header
 * fields from offset 16 to end (end <= len(buf), checked by the caller and
 * again here). */
static PyObject *
py_fields(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t end;
    PyObject *order;
    (void)self;
    if (Fields == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cwire.setup() was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*nO:fields", &view, &end, &order))
        return NULL;
    PyObject *values = NULL;
    if (end < 16 || end > view.len) {
        PyErr_SetString(PyExc_ValueError, "end must satisfy 16 <= end <= len(buf)");
        goto done;
    }
    Buf buf = {view.buf, order == BigOrder};
    values = PyDict_New();
    if (values == NULL)
        goto done;
    Py_ssize_t pos = 16;  /* first field: 8-aligned already */
    while (pos < end) {
        /* one (yv) struct: code, signature of the value, the value */
        int code;
        PyObject *sig;
        if ((pos & 7) && pad(&buf, &pos, 8, end) < 0)
            goto failed;
        if (pos + 4 <= end && buf.b[pos + 1] == 1 && buf.b[pos + 3] == 0) {
            /* the usual case: a signature of one type code (the reference's chr() of its byte) */
            code = buf.b[pos];
            sig = PyUnicode_FromOrdinal(buf.b[pos + 2]);
            pos += 4;
        } else {
            if (pos + 2 > end) {
                fail("header field at offset %zd truncated", pos);
                goto failed;
            }
            code = buf.b[pos];
            pos += 1;
            sig = signature(&buf, &pos, end);
        }
        if (sig == NULL)
            goto failed;
        PyObject *key = PyLong_FromLong(code);
        PyObject *known = key == NULL ? NULL : PyDict_GetItemWithError(Fields, key);
        Py_XDECREF(key);
        if (known == NULL && PyErr_Occurred()) {
            Py_DECREF(sig);
            goto failed;
        }
        if (known != NULL) {  /* (name, expected type code, name check or None) */
            if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 3) {
                Py_DECREF(sig);
                PyErr_SetString(PyExc_TypeError, "wire._FIELDS holds (name, type, check) tuples");
                goto failed;
            }
            PyObject *name = PyTuple_GET_ITEM(known, 0), *expected = PyTuple_GET_ITEM(known, 1);
            PyObject *check = PyTuple_GET_ITEM(known, 2);
            int same = PyUnicode_Compare(sig, expected) == 0;
            if (!same) {
                if (!PyErr_Occurred())
                    PyErr_Format(WireError, "header field %d has type %R, not %R", code, sig, expected);
                Py_DECREF(sig);
                goto failed;
            }
            Py_DECREF(sig);
            int present = PyDict_Contains(values, name);
            if (present) {
                if (present > 0)
                    PyErr_Format(WireError, "header field %d appears twice", code);
                goto failed;
            }
            PyObject *value = read_value(&buf, &pos, end, expected, 3);
            if (value == NULL)
                goto failed;
            if (check != Py_None) {
                PyObject *ok = PyObject_CallOneArg(check, value);
                if (ok == NULL) {
                    Py_DECREF(value);
                    goto failed;
                }
                Py_DECREF(ok);
            }
            int r = PyDict_SetItem(values, name, value);
            Py_DECREF(value);
            if (r < 0)
                goto failed;
        } else if (code == 0) {
            Py_DECREF(sig);
            PyErr_SetString(WireError, "header field code 0 is invalid");
            goto failed;
        } else {  /* unknown fields are ignored, but must be well-formed */
            PyObject *t = PyObject_CallFunctionObjArgs(OneType, sig, Py_False, NULL);
            Py_DECREF(sig);
            PyObject *value = t == NULL ? NULL : read_value(&buf, &pos, end, t, 3);
            Py_XDECREF(t);
            if (value == NULL)
                goto failed;
            Py_DECREF(value);
        }
    }
    goto done;
failed:
    Py_CLEAR(values);
done:
    PyBuffer_Release(&view);
    return values;
}

/* setup(WireError, Variant, one_type, parse, big_order, fields) */
static PyObject *
py_setup(PyObject *self, PyObject *args)
{
    PyObject *error, *variant, *one_type, *parse, *big, *fields;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOO!:setup", &error, &variant, &one_type, &parse, &big, &PyDict_Type, &fields))
        return NULL;
    Py_XSETREF(Fields, Py_NewRef(fields));
    Py_XSETREF(BigOrder, Py_NewRef(big));
    Py_XSETREF(WireError, Py_NewRef(error));
    Py_XSETREF(VariantType, Py_NewRef(variant));
    Py_XSETREF(OneType, Py_NewRef(one_type));
    Py_XSETREF(Parse, Py_NewRef(parse));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read", py_read, METH_VARARGS, "read(buf, pos, end, t, order, level) -> (value, pos): wire._read in C."},
    {"fields", py_fields, METH_VARARGS, "fields(buf, end, order) -> {name: value}: wire._fields in C."},
    {"setup", py_setup, METH_VARARGS,
     "setup(WireError, Variant, one_type, parse, big_order, fields): what read() and fields() need of wire."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cwire", "Reading D-Bus values in C (see wire._read).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cwire(void)
{
    return PyModule_Create(&module);
}
