/* SRTP and the RTP header in one call each way, on the libsrtp inside pylibsrtp (docs/session.md).
 *
 * The transceiver's media path per packet was: copy into a cffi buffer, call
 * libsrtp through cffi, slice the result out, unpack the header with struct
 * (inbound); pack the header, join it with the payload, then the same again
 * (outbound). An RtpIo does each direction in one call: read_rtp(packet)
 * returns (payload type, sequence number, timestamp, SSRC, payload) of an
 * authenticated packet, write_rtp(...) builds the header around the payload
 * and returns the SRTP packet. It is optional: without it
 * voiceedge.transceiver.srtp does the same in Python.
 *
 * Which libsrtp: pylibsrtp links libsrtp and OpenSSL statically into its cffi
 * module, and its srtp_t contexts are only valid for that copy. So nothing
 * here links libsrtp: the caller passes the addresses of srtp_protect and
 * srtp_unprotect taken from pylibsrtp's cffi lib (libsrtp 2's
 * (srtp_t, void *, int *) signature), the two contexts, and the pylibsrtp
 * Session objects that own them. The RtpIo holds those owners until it is
 * deallocated, so a context cannot be freed while it can still be used.
 *
 * Failures: anything that is not the common success calls the caller's
 * failed(code, packet) and returns what it returns (or raises what it
 * raises). code > 0 is a libsrtp status; code < 0 is one of the CODE_*
 * constants below. Inbound, CODE_ELSEWHERE means "not this path" (an SSRC not
 * yet accepted, a packet too short or too long for this buffer, not version
 * 2): the caller runs its own path on the packet, which decides and counts
 * as it always has. CODE_RTP_* are parse_rtp's errors on the authenticated
 * plaintext (voiceedge.wire.rtp, the same checks and order). Outbound, packet
 * is None and CODE_TOO_LONG means the packet would not fit with its trailer.
 * Lengths are checked before any copy; the buffer is BUFFER_SIZE bytes, as
 * pylibsrtp's and voiceedge.transceiver.srtp's are.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define BUFFER_SIZE 1500
#define RTP_HEADER 12
#define MAX_ACCEPTED 64

#define CODE_ELSEWHERE (-1)
#define CODE_TOO_LONG (-2)
#define CODE_RTP_SHORT (-3)
#define CODE_RTP_VERSION (-4)
#define CODE_RTP_CSRC (-5)
#define CODE_RTP_EXTENSION (-6)
#define CODE_RTP_PADDING (-7)

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr), and unprotect alike. */
typedef int (*srtp_function)(void *ctx, void *packet, int *length);

typedef struct {
    PyObject_HEAD
    srtp_function protect;
    srtp_function unprotect;
    void *tx;
    void *rx;
    PyObject *owners;   /* whatever keeps tx and rx alive (pylibsrtp Sessions); held until dealloc */
    PyObject *failed;   /* failed(code, packet): the caller's path for everything but success */
    Py_ssize_t min_rtp; /* inbound: header + tag; shorter goes to the caller's path */
    Py_ssize_t max_rtp; /* outbound: the longest RTP packet that fits with its trailer */
    int accepted_count;
    uint32_t accepted[MAX_ACCEPTED];
    _Alignas(16) unsigned char buffer[BUFFER_SIZE];
} RtpIo;

static void *
address(PyObject *value, const char *what)
{
    void *pointer = PyLong_AsVoidPtr(value);
    if (pointer == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s is NULL", what);
    return pointer;
}

static int
RtpIo_init(RtpIo *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"protect", "unprotect", "tx", "rx", "owners", "failed", "min_rtp", "max_rtp", NULL};
    PyObject *protect, *unprotect, *tx, *rx, *owners, *failed;
    Py_ssize_t min_rtp, max_rtp;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOnn", names, &protect, &unprotect, &tx, &rx, &owners,
                                     &failed, &min_rtp, &max_rtp))
        return -1;
    if (self->owners != NULL) {
        /* Contexts must never change under a live object: one initialisation only. */
        PyErr_SetString(PyExc_RuntimeError, "RtpIo is already initialised");
        return -1;
    }
    if (!PyCallable_Check(failed)) {
        PyErr_SetString(PyExc_TypeError, "failed must be callable");
        return -1;
    }
    if (min_rtp < RTP_HEADER || min_rtp > BUFFER_SIZE || max_rtp < RTP_HEADER || max_rtp > BUFFER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "min_rtp and max_rtp must be between 12 and the buffer size (1500)");
        return -1;
    }
    void *p = address(protect, "protect"), *u = NULL, *t = NULL, *r = NULL;
    if (p != NULL)
        u = address(unprotect, "unprotect");
    if (u != NULL)
        t = address(tx, "tx");
    if (t != NULL)
        r = address(rx, "rx");
    if (r == NULL)
        return -1;
    self->protect = (srtp_function)p;
    self->unprotect = (srtp_function)u;
    self->tx = t;
    self->rx = r;
    Py_INCREF(owners);
    self->owners = owners;
    Py_INCREF(failed);
    self->failed = failed;
    self->min_rtp = min_rtp;
    self->max_rtp = max_rtp;
    self->accepted_count = 0;
    return 0;
}

static int
RtpIo_traverse(RtpIo *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owners);
    Py_VISIT(self->failed);
    return 0;
}

static int
RtpIo_clear(RtpIo *self)
{
    /* Breaks the cycle through failed (a bound method of the owner of this object). The owners stay
     * until dealloc: nothing may free a context this object could still be called with. */
    Py_CLEAR(self->failed);
    return 0;
}

static void
RtpIo_dealloc(RtpIo *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->owners);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
call_failed(RtpIo *self, int code, PyObject *packet)
{
    PyObject *failed = self->failed;
    if (failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "RtpIo is not initialised or was cleared");
        return NULL;
    }
    PyObject *arguments[2];
    arguments[0] = PyLong_FromLong(code);
    if (arguments[0] == NULL)
        return NULL;
    arguments[1] = packet;
    Py_INCREF(failed); /* the call may clear it */
    PyObject *result = PyObject_Vectorcall(failed, arguments, 2, NULL);
    Py_DECREF(failed);
    Py_DECREF(arguments[0]);
    return result;
}

static inline uint32_t
load32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void
store32(unsigned char *p, uint32_t value)
{
    p[0] = (unsigned char)(value >> 24);
    p[1] = (unsigned char)(value >> 16);
    p[2] = (unsigned char)(value >> 8);
    p[3] = (unsigned char)value;
}

/* The bytes of a bytes object, or of any other buffer (released by release_view). */
static int
view_of(PyObject *object, Py_buffer *view, const unsigned char **data, Py_ssize_t *size)
{
    if (PyBytes_CheckExact(object)) {
        view->obj = NULL;
        *data = (const unsigned char *)PyBytes_AS_STRING(object);
        *size = PyBytes_GET_SIZE(object);
        return 0;
    }
    if (PyObject_GetBuffer(object, view, PyBUF_SIMPLE) < 0)
        return -1;
    *data = (const unsigned char *)view->buf;
    *size = view->len;
    return 0;
}

static void
release_view(Py_buffer *view)
{
    if (view->obj != NULL)
        PyBuffer_Release(view);
}

/* parse_rtp (voiceedge.wire.rtp) on the plaintext: 0 and the payload's bounds, or a CODE_RTP_*. */
static int
parse(const unsigned char *data, Py_ssize_t size, Py_ssize_t *start, Py_ssize_t *end)
{
    if (size < RTP_HEADER)
        return CODE_RTP_SHORT;
    unsigned first = data[0];
    if ((first & 0xC0) != 0x80)
        return CODE_RTP_VERSION;
    Py_ssize_t pos = RTP_HEADER;
    if (first == 0x80) {
        *start = pos;
        *end = size;
        return 0;
    }
    Py_ssize_t csrc_count = first & 0x0F;
    if (csrc_count) {
        if (pos + 4 * csrc_count > size)
            return CODE_RTP_CSRC;
        pos += 4 * csrc_count;
    }
    if (first & 0x10) {
        if (pos + 4 > size)
            return CODE_RTP_EXTENSION;
        Py_ssize_t words = (Py_ssize_t)data[pos + 2] << 8 | data[pos + 3];
        pos += 4;
        if (pos + 4 * words > size)
            return CODE_RTP_EXTENSION;
        pos += 4 * words;
    }
    if (first & 0x20) {
        Py_ssize_t padding = size > pos ? data[size - 1] : 0;
        if (padding == 0 || padding > size - pos)
            return CODE_RTP_PADDING;
        *start = pos;
        *end = size - padding;
        return 0;
    }
    *start = pos;
    *end = size;
    return 0;
}

PyDoc_STRVAR(read_rtp_doc,
"read_rtp(packet) -> (payload_type, sequence_number, timestamp, ssrc, payload)\n\n"
"Verify and decrypt one SRTP packet of an accepted SSRC and parse its header; anything else\n"
"goes to failed(code, packet).");

static PyObject *
RtpIo_read_rtp(RtpIo *self, PyObject *packet)
{
    Py_buffer view;
    const unsigned char *data;
    Py_ssize_t size;
    if (view_of(packet, &view, &data, &size) < 0)
        return NULL;
    int code = CODE_ELSEWHERE;
    if (size < self->min_rtp || size > BUFFER_SIZE || (data[0] >> 6) != 2 || self->failed == NULL) {
        release_view(&view);
        return call_failed(self, code, packet);
    }
    uint32_t ssrc = load32(data + 8);
    int known = 0;
    for (int i = 0; i < self->accepted_count; i++) {
        if (self->accepted[i] == ssrc) {
            known = 1;
            break;
        }
    }
    if (!known) {
        release_view(&view);
        return call_failed(self, code, packet);
    }
    unsigned char *buffer = self->buffer;
    memcpy(buffer, data, (size_t)size);
    release_view(&view);
    int length = (int)size;
    int status = self->unprotect(self->rx, buffer, &length);
    if (status != 0)
        return call_failed(self, status, packet);
    Py_ssize_t start = 0, end = 0;
    if (length < 0 || length > size)
        return call_failed(self, CODE_RTP_SHORT, packet); /* libsrtp never grows a packet it unprotects */
    code = parse(buffer, length, &start, &end);
    if (code != 0)
        return call_failed(self, code, packet);
    PyObject *result = PyTuple_New(5);
    if (result == NULL)
        return NULL;
    PyObject *item;
    if ((item = PyLong_FromLong(buffer[1] & 0x7F)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(result, 0, item);
    if ((item = PyLong_FromLong((long)buffer[2] << 8 | buffer[3])) == NULL)
        goto fail;
    PyTuple_SET_ITEM(result, 1, item);
    if ((item = PyLong_FromUnsignedLong(load32(buffer + 4))) == NULL)
        goto fail;
    PyTuple_SET_ITEM(result, 2, item);
    if ((item = PyLong_FromUnsignedLong(load32(buffer + 8))) == NULL)
        goto fail;
    PyTuple_SET_ITEM(result, 3, item);
    if ((item = PyBytes_FromStringAndSize((const char *)buffer + start, end - start)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(result, 4, item);
    return result;
fail:
    Py_DECREF(result);
    return NULL;
}

static int
small_argument(PyObject *value, unsigned long limit, const char *what, unsigned long *out)
{
    unsigned long number = PyLong_AsUnsignedLong(value);
    if (number == (unsigned long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "RTP %s out of range: %R", what, value);
        }
        return -1;
    }
    if (number > limit) {
        PyErr_Format(PyExc_ValueError, "RTP %s out of range: %R", what, value);
        return -1;
    }
    *out = number;
    return 0;
}

PyDoc_STRVAR(write_rtp_doc,
"write_rtp(marker_payload_type, sequence_number, timestamp, ssrc, extension, payload) -> bytes\n\n"
"The SRTP packet of an RTP header (version 2, the X bit set when extension is not empty, the\n"
"header's second byte marker_payload_type), then extension (a whole extension block), then\n"
"payload. Failures go to failed(code, None).");

static PyObject *
RtpIo_write_rtp(RtpIo *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "write_rtp takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    unsigned long second, sequence, timestamp, ssrc;
    if (small_argument(args[0], 0xFF, "marker and payload type", &second) < 0 ||
        small_argument(args[1], 0xFFFF, "sequence number", &sequence) < 0 ||
        small_argument(args[2], 0xFFFFFFFFUL, "timestamp", &timestamp) < 0 ||
        small_argument(args[3], 0xFFFFFFFFUL, "SSRC", &ssrc) < 0)
        return NULL;
    Py_buffer extension_view, payload_view;
    const unsigned char *extension, *payload;
    Py_ssize_t extension_size, payload_size;
    if (view_of(args[4], &extension_view, &extension, &extension_size) < 0)
        return NULL;
    if (view_of(args[5], &payload_view, &payload, &payload_size) < 0) {
        release_view(&extension_view);
        return NULL;
    }
    /* Each part is bounded before the sum, so the sum cannot overflow. */
    if (extension_size > self->max_rtp || payload_size > self->max_rtp ||
        RTP_HEADER + extension_size + payload_size > self->max_rtp || self->failed == NULL) {
        release_view(&extension_view);
        release_view(&payload_view);
        return call_failed(self, CODE_TOO_LONG, Py_None);
    }
    unsigned char *buffer = self->buffer;
    buffer[0] = extension_size ? 0x90 : 0x80;
    buffer[1] = (unsigned char)second;
    buffer[2] = (unsigned char)(sequence >> 8);
    buffer[3] = (unsigned char)sequence;
    store32(buffer + 4, (uint32_t)timestamp);
    store32(buffer + 8, (uint32_t)ssrc);
    memcpy(buffer + RTP_HEADER, extension, (size_t)extension_size);
    memcpy(buffer + RTP_HEADER + extension_size, payload, (size_t)payload_size);
    release_view(&extension_view);
    release_view(&payload_view);
    int length = (int)(RTP_HEADER + extension_size + payload_size);
    int status = self->protect(self->tx, buffer, &length);
    if (status != 0)
        return call_failed(self, status, Py_None);
    if (length < 0 || length > BUFFER_SIZE) {
        PyErr_SetString(PyExc_RuntimeError, "libsrtp returned a length outside its buffer");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)buffer, length);
}

PyDoc_STRVAR(accept_doc,
"accept(ssrcs) -> None\n\n"
"The SSRCs read_rtp decrypts itself (the caller's accepted set, at most 64 of them: any others\n"
"go to failed(CODE_ELSEWHERE, packet) like any SSRC not given).");

static PyObject *
RtpIo_accept(RtpIo *self, PyObject *ssrcs)
{
    PyObject *sequence = PySequence_Fast(ssrcs, "ssrcs must be iterable");
    if (sequence == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    uint32_t accepted[MAX_ACCEPTED];
    int taken = 0;
    for (Py_ssize_t i = 0; i < count && taken < MAX_ACCEPTED; i++) {
        unsigned long value;
        if (small_argument(PySequence_Fast_GET_ITEM(sequence, i), 0xFFFFFFFFUL, "SSRC", &value) < 0) {
            Py_DECREF(sequence);
            return NULL;
        }
        accepted[taken++] = (uint32_t)value;
    }
    Py_DECREF(sequence);
    memcpy(self->accepted, accepted, sizeof(uint32_t) * (size_t)taken);
    self->accepted_count = taken;
    Py_RETURN_NONE;
}

static PyMethodDef RtpIo_methods[] = {
    {"read_rtp", (PyCFunction)RtpIo_read_rtp, METH_O, read_rtp_doc},
    {"write_rtp", (PyCFunction)(void (*)(void))RtpIo_write_rtp, METH_FASTCALL, write_rtp_doc},
    {"accept", (PyCFunction)RtpIo_accept, METH_O, accept_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RtpIoType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "voiceedge.transceiver._srtpio.RtpIo",
    .tp_doc = "One SRTP session's RTP, each way in one call (see the module's comments).",
    .tp_basicsize = sizeof(RtpIo),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RtpIo_init,
    .tp_dealloc = (destructor)RtpIo_dealloc,
    .tp_traverse = (traverseproc)RtpIo_traverse,
    .tp_clear = (inquiry)RtpIo_clear,
    .tp_methods = RtpIo_methods,
};

static struct PyModuleDef srtpio_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "voiceedge.transceiver._srtpio",
    .m_doc = "SRTP and the RTP header in one call each way, on pylibsrtp's libsrtp.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__srtpio(void)
{
    if (PyType_Ready(&RtpIoType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&srtpio_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&RtpIoType);
    if (PyModule_AddObject(module, "RtpIo", (PyObject *)&RtpIoType) < 0) {
        Py_DECREF(&RtpIoType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "BUFFER_SIZE", BUFFER_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "MAX_ACCEPTED", MAX_ACCEPTED) < 0 ||
        PyModule_AddIntConstant(module, "CODE_ELSEWHERE", CODE_ELSEWHERE) < 0 ||
        PyModule_AddIntConstant(module, "CODE_TOO_LONG", CODE_TOO_LONG) < 0 ||
        PyModule_AddIntConstant(module, "CODE_RTP_SHORT", CODE_RTP_SHORT) < 0 ||
        PyModule_AddIntConstant(module, "CODE_RTP_VERSION", CODE_RTP_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "CODE_RTP_CSRC", CODE_RTP_CSRC) < 0 ||
        PyModule_AddIntConstant(module, "CODE_RTP_EXTENSION", CODE_RTP_EXTENSION) < 0 ||
        PyModule_AddIntConstant(module, "CODE_RTP_PADDING", CODE_RTP_PADDING) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
