/* Batched UDP datagram I/O for the relay: recvmmsg into preallocated slots, sendmmsg of a queue.
 *
 * The standard library has no recvmmsg/sendmmsg and no maintained binding
 * exists, so this small helper wraps them (docs/relay.md, "Batched system
 * calls"). It is optional: without it the relay reads with recvfrom_into.
 *
 * Ownership: a Batch holds a writable buffer export of the bytearray it is
 * given for its whole life (the bytearray cannot be resized meanwhile) and
 * never allocates packet memory of its own. Slot i is buffer[i*stride :
 * (i+1)*stride]; datagram i is received at i*stride + headroom, so the caller
 * can write a header in front of it in place. queue() records a range of that
 * same buffer and a destination; send() hands the queue to sendmmsg and
 * empties it, whatever happened. The queue refers to the buffer, so the caller
 * sends before the next recv() overwrites the slots.
 *
 * Errors: recv() returns [] when nothing is waiting (EAGAIN) and raises
 * OSError otherwise, having received nothing. send() never raises for a
 * datagram: one that fails (EAGAIN, ENOBUFS, EMSGSIZE, ECONNREFUSED, ...) is
 * skipped and counted, and the rest of the queue still goes.
 *
 * The return direction (recv_routed, route): each received datagram's
 * encapsulation header is checked here, with the same rules and messages as
 * voiceedge.wire.encap (peek_client() is this parser's Python entry, which the
 * relay fuzz target compares with encap's), and its route key (client IP
 * packed, client port) looked up in the caller's dict (route_by). The caller
 * gets the payload's offset and the dict's entry; the flow table and every
 * decision about the datagram stay in Python. A header that does not parse, or
 * carries a hop count, or whose key is not in the dict, comes back whole with
 * None, for the caller's own checks.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103  /* linux/udp.h: the size of each datagram of one GSO send */
#endif

/* One UDP_SEGMENT (GSO) send carries at most this many datagrams (the kernel's UDP_MAX_SEGMENTS is 64
 * or more) and this many payload bytes in all (under IPv4's 65,507, with room to spare). */
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 60000

typedef union {
    struct cmsghdr header;
    char space[CMSG_SPACE(sizeof(uint16_t))];
} SegmentControl;

/* Source addresses recently seen, so a client's datagrams share one (host, port) tuple instead of
 * formatting a new one per packet: direct-mapped, each entry holding a reference to its tuple. */
#define ADDRESS_CACHE 256

typedef struct {
    struct sockaddr_in6 key;  /* sockaddr_in or sockaddr_in6, zero-padded */
    PyObject *tuple;          /* NULL: empty */
} CachedAddress;

/* Destinations recently queued, by the identity of their (host, port) tuple: a flow's destination is one
 * tuple for the flow's life, so its sockaddr is converted once instead of per packet. Direct-mapped; each
 * entry holds a reference to its tuple, so the pointer cannot be reused by another object while cached
 * (and a tuple of a str and an int cannot change). */
#define DESTINATION_CACHE 256

typedef struct {
    PyObject *tuple;          /* NULL: empty */
    struct sockaddr_storage addr; /* a sockaddr_in or sockaddr_in6 */
    socklen_t len;
} CachedDestination;

/* Route keys (client IP packed, client port) recently parsed from encapsulation headers, so a client's
 * datagrams share one key tuple (whose bytes keep their hash) instead of a new one per packet. */
#define KEY_CACHE 256

typedef struct {
    unsigned char ip[16];
    Py_ssize_t ip_len;
    unsigned int port;
    PyObject *key;  /* NULL: empty */
} CachedKey;

typedef struct {
    PyObject_HEAD
    Py_buffer view;  /* the caller's bytearray, exported for our whole life */
    int have_view;
    Py_ssize_t count, stride, headroom;
    struct mmsghdr *rx_msgs;
    struct iovec *rx_iov;
    struct sockaddr_storage *rx_addrs;
    struct mmsghdr *tx_msgs;
    struct iovec *tx_iov;
    struct sockaddr_storage *tx_addrs;
    Py_ssize_t *tx_payload;  /* payload bytes of each queued datagram (headers not counted) */
    struct mmsghdr *gso_msgs; /* send(): one message per run of the queue (a GSO send, or one datagram) */
    SegmentControl *gso_control;
    Py_ssize_t *gso_first;   /* the queue index each message starts at */
    int segment;             /* 1: runs to one destination go as one UDP_SEGMENT send */
    long long segmented;     /* datagrams sent inside UDP_SEGMENT sends */
    Py_ssize_t queued;
    long long truncated;     /* datagrams larger than a slot, dropped by recv() */
    int last_errno;          /* errno of the last datagram send() could not send */
    CachedAddress *addresses; /* ADDRESS_CACHE entries */
    CachedDestination *destinations; /* DESTINATION_CACHE entries */
    CachedKey *keys;         /* KEY_CACHE entries */
    PyObject *table;         /* route_by()'s dict, or NULL */
    Py_ssize_t received;     /* datagrams the last recv*() took from the socket */
    long long foreign;       /* media recv_media()/media() queued for flows whose foreign is true */
} Batch;

static int queue_one(Batch *self, Py_ssize_t start, Py_ssize_t payload_start, Py_ssize_t end, PyObject *addr);

/* The attributes of the relay's Flow (voiceedge.relay.flows) the forwarding fast paths read (interned). */
static PyObject *str_header, *str_next_hop, *str_last_seen, *str_confirmed, *str_return_via, *str_client,
    *str_route_key, *str_foreign;

/* Those attributes read through their type's data descriptors (a __slots__ class's member descriptors),
 * found once per type: what PyObject_GetAttr and PyObject_SetAttr do for such a type (a data descriptor
 * on the type wins over anything else), without the type lookup per access. A type whose getattr or
 * setattr is not the generic one, or whose attribute is not a data descriptor, takes PyObject_GetAttr. */
enum { A_HEADER, A_NEXT_HOP, A_LAST_SEEN, A_CONFIRMED, A_RETURN_VIA, A_CLIENT, A_FOREIGN, A_COUNT };
static PyObject **attribute_names[A_COUNT] = {
    &str_header, &str_next_hop, &str_last_seen, &str_confirmed, &str_return_via, &str_client, &str_foreign,
};
static PyTypeObject *flow_type;             /* the type the descriptors below are of (a reference) */
static PyObject *flow_descriptors[A_COUNT]; /* NULL: use PyObject_GetAttr / PyObject_SetAttr */

static void
learn_flow_type(PyTypeObject *type)
{
    int generic = type->tp_getattro == PyObject_GenericGetAttr && type->tp_setattro == PyObject_GenericSetAttr;
    for (int k = 0; k < A_COUNT; k++) {
        PyObject *d = generic ? PyObject_GetAttr((PyObject *)type, *attribute_names[k]) : NULL;
        if (d != NULL && (Py_TYPE(d)->tp_descr_get == NULL || Py_TYPE(d)->tp_descr_set == NULL)) {
            Py_CLEAR(d);  /* not a data descriptor: an instance could shadow it */
        }
        PyErr_Clear();
        Py_XSETREF(flow_descriptors[k], d);
    }
    Py_INCREF(type);
    Py_XSETREF(flow_type, type);
}

/* flow.<attribute k>: a new reference, or NULL with an exception set. */
static PyObject *
flow_get(PyObject *flow, int k)
{
    PyTypeObject *type = Py_TYPE(flow);
    if (type != flow_type) {
        learn_flow_type(type);
    }
    PyObject *d = flow_descriptors[k];
    if (d != NULL) {
        return Py_TYPE(d)->tp_descr_get(d, flow, (PyObject *)type);
    }
    return PyObject_GetAttr(flow, *attribute_names[k]);
}

/* flow.<attribute k> = value: 0, or -1 with an exception set. */
static int
flow_set(PyObject *flow, int k, PyObject *value)
{
    PyTypeObject *type = Py_TYPE(flow);
    if (type != flow_type) {
        learn_flow_type(type);
    }
    PyObject *d = flow_descriptors[k];
    if (d != NULL) {
        return Py_TYPE(d)->tp_descr_set(d, flow, value);
    }
    return PyObject_SetAttr(flow, *attribute_names[k], value);
}

static void
Batch_dealloc(Batch *self)
{
    if (self->have_view) {
        PyBuffer_Release(&self->view);
    }
    PyMem_Free(self->rx_msgs);
    PyMem_Free(self->rx_iov);
    PyMem_Free(self->rx_addrs);
    PyMem_Free(self->tx_msgs);
    PyMem_Free(self->tx_iov);
    PyMem_Free(self->tx_addrs);
    PyMem_Free(self->tx_payload);
    PyMem_Free(self->gso_msgs);
    PyMem_Free(self->gso_control);
    PyMem_Free(self->gso_first);
    if (self->addresses) {
        for (int i = 0; i < ADDRESS_CACHE; i++) {
            Py_XDECREF(self->addresses[i].tuple);
        }
        PyMem_Free(self->addresses);
    }
    if (self->keys) {
        for (int i = 0; i < KEY_CACHE; i++) {
            Py_XDECREF(self->keys[i].key);
        }
        PyMem_Free(self->keys);
    }
    Py_XDECREF(self->table);
    if (self->destinations) {
        for (int i = 0; i < DESTINATION_CACHE; i++) {
            Py_XDECREF(self->destinations[i].tuple);
        }
        PyMem_Free(self->destinations);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Batch_init(Batch *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "count", "stride", "headroom", NULL};
    PyObject *buffer;
    Py_ssize_t count, stride, headroom;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onnn", kwlist, &buffer, &count, &stride, &headroom)) {
        return -1;
    }
    if (self->have_view) {
        PyErr_SetString(PyExc_TypeError, "Batch is already initialised");
        return -1;
    }
    if (count < 1 || count > 1024 || headroom < 0 || stride <= headroom) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= count <= 1024 and 0 <= headroom < stride");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    self->have_view = 1;
    if (self->view.len / count < stride) {
        PyErr_SetString(PyExc_ValueError, "buffer is smaller than count * stride");
        return -1;
    }
    self->count = count;
    self->stride = stride;
    self->headroom = headroom;
    self->rx_msgs = PyMem_Calloc(count, sizeof(struct mmsghdr));
    self->rx_iov = PyMem_Calloc(count, sizeof(struct iovec));
    self->rx_addrs = PyMem_Calloc(count, sizeof(struct sockaddr_storage));
    self->tx_msgs = PyMem_Calloc(count, sizeof(struct mmsghdr));
    self->tx_iov = PyMem_Calloc(count, sizeof(struct iovec));
    self->tx_addrs = PyMem_Calloc(count, sizeof(struct sockaddr_storage));
    self->tx_payload = PyMem_Calloc(count, sizeof(Py_ssize_t));
    self->gso_msgs = PyMem_Calloc(count, sizeof(struct mmsghdr));
    self->gso_control = PyMem_Calloc(count, sizeof(SegmentControl));
    self->gso_first = PyMem_Calloc(count + 1, sizeof(Py_ssize_t));
    self->segment = 1;
    self->addresses = PyMem_Calloc(ADDRESS_CACHE, sizeof(CachedAddress));
    self->destinations = PyMem_Calloc(DESTINATION_CACHE, sizeof(CachedDestination));
    self->keys = PyMem_Calloc(KEY_CACHE, sizeof(CachedKey));
    if (!self->rx_msgs || !self->rx_iov || !self->rx_addrs || !self->tx_msgs || !self->tx_iov
        || !self->tx_addrs || !self->tx_payload || !self->gso_msgs
        || !self->gso_control || !self->gso_first || !self->addresses || !self->destinations || !self->keys) {
        PyErr_NoMemory();
        return -1;
    }
    char *base = self->view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        self->rx_iov[i].iov_base = base + i * stride + headroom;
        self->rx_iov[i].iov_len = (size_t)(stride - headroom);
        self->rx_msgs[i].msg_hdr.msg_iov = &self->rx_iov[i];
        self->rx_msgs[i].msg_hdr.msg_iovlen = 1;
        self->rx_msgs[i].msg_hdr.msg_name = &self->rx_addrs[i];
        self->tx_msgs[i].msg_hdr.msg_iov = &self->tx_iov[i];
        self->tx_msgs[i].msg_hdr.msg_iovlen = 1;
        self->tx_msgs[i].msg_hdr.msg_name = &self->tx_addrs[i];
    }
    return 0;
}

static PyObject *
make_pair(const char *host, unsigned int port)
{
    PyObject *h = PyUnicode_FromString(host);
    PyObject *p = PyLong_FromUnsignedLong(port);
    PyObject *pair = (h && p) ? PyTuple_New(2) : NULL;
    if (!pair) {
        Py_XDECREF(h);
        Py_XDECREF(p);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, h);
    PyTuple_SET_ITEM(pair, 1, p);
    return pair;
}

/* (host, port) of a received source address, as socket.recvfrom gives it (IPv6: only its first two). */
static PyObject *
address_tuple(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        if (!inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host)) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return make_pair(host, ntohs(sin->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host)) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return make_pair(host, ntohs(sin6->sin6_port));
    }
    PyErr_Format(PyExc_OSError, "unexpected address family %d", (int)ss->ss_family);
    return NULL;
}

/* The (host, port) tuple of a received source, from the cache or made (and cached). New reference. */
static PyObject *
source_tuple(Batch *self, const struct sockaddr_storage *ss)
{
    struct sockaddr_in6 key;
    unsigned int slot;
    memset(&key, 0, sizeof key);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        struct sockaddr_in *k = (struct sockaddr_in *)&key;
        k->sin_family = AF_INET;
        k->sin_port = sin->sin_port;
        k->sin_addr = sin->sin_addr;
        slot = (unsigned int)(sin->sin_addr.s_addr * 2654435761u) ^ sin->sin_port;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        uint32_t words[4];
        key.sin6_family = AF_INET6;
        key.sin6_port = sin6->sin6_port;
        key.sin6_addr = sin6->sin6_addr;
        memcpy(words, &sin6->sin6_addr, sizeof words);
        slot = ((words[0] ^ words[1] ^ words[2] ^ words[3]) * 2654435761u) ^ sin6->sin6_port;
    } else {
        return address_tuple(ss);
    }
    CachedAddress *entry = &self->addresses[(slot ^ (slot >> 16)) % ADDRESS_CACHE];
    if (entry->tuple != NULL && memcmp(&entry->key, &key, sizeof key) == 0) {
        Py_INCREF(entry->tuple);
        return entry->tuple;
    }
    PyObject *tuple = address_tuple(ss);
    if (tuple != NULL) {
        Py_XSETREF(entry->tuple, Py_NewRef(tuple));
        entry->key = key;
    }
    return tuple;
}


/* -- the encapsulation header (docs/encapsulation.md), as voiceedge.wire.encap reads it ------------ */

#define FIRST_BYTE_MIN 0xF0
#define FIRST_BYTE 0xF1
#define FLAG_HOPS 0x04
#define KNOWN_FLAGS 0x07
#define MAX_HOPS 8

static const Py_ssize_t header_sizes[8] = {14, 26, 26, 38, 15, 27, 27, 39};
static const Py_ssize_t client_ip_lens[8] = {4, 16, 4, 16, 4, 16, 4, 16};

/* Check the header at p[0:n] as encap.header_length does. 0 and *size, *ip_len on success; else -1 and
 * the same message encap.EncapError would carry, in why. */
static int
parse_header(const unsigned char *p, Py_ssize_t n, Py_ssize_t *size, Py_ssize_t *ip_len, char *why, size_t why_len)
{
    if (n < 2) {
        snprintf(why, why_len, "datagram too short for an encapsulation header");
        return -1;
    }
    if (p[0] != FIRST_BYTE) {
        if (p[0] < FIRST_BYTE_MIN) {
            snprintf(why, why_len, "first byte 0x%02x is not an encapsulation header", p[0]);
        } else {
            snprintf(why, why_len, "unsupported encapsulation version %d", p[0] & 0x0F);
        }
        return -1;
    }
    unsigned int flags = p[1];
    if (flags & ~KNOWN_FLAGS) {
        snprintf(why, why_len, "reserved encapsulation flags set: 0x%02x", flags);
        return -1;
    }
    if (n < header_sizes[flags]) {
        snprintf(why, why_len, "truncated encapsulation header");
        return -1;
    }
    if ((flags & FLAG_HOPS) && p[header_sizes[flags] - 1] > MAX_HOPS) {
        snprintf(why, why_len, "hop count %d is over %d", p[header_sizes[flags] - 1], MAX_HOPS);
        return -1;
    }
    *size = header_sizes[flags];
    *ip_len = client_ip_lens[flags];
    return 0;
}

PyDoc_STRVAR(peek_client_doc,
"peek_client(data) -> (client ip packed, client port, header length)\n\n"
"What voiceedge.wire.encap.peek_client returns, from the parser route() and recv_routed() use;\n"
"ValueError with encap's message for a malformed header (the fuzz target compares the two).");

static PyObject *
batchio_peek_client(PyObject *module, PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *p = data.buf;
    Py_ssize_t size, ip_len;
    char why[80];
    PyObject *result = NULL;
    if (parse_header(p, data.len, &size, &ip_len, why, sizeof why) < 0) {
        PyErr_SetString(PyExc_ValueError, why);
    } else {
        result = Py_BuildValue("(y#In)", (const char *)p + 6, ip_len, ((unsigned int)p[2] << 8) | p[3], size);
    }
    PyBuffer_Release(&data);
    return result;
}

/* The route key (client ip packed, client port) of a parsed header at p, from the cache or made. New reference;
 * *cached says which, *slot is its cache entry. */
static PyObject *
route_key(Batch *self, const unsigned char *p, Py_ssize_t ip_len, int *cached, CachedKey **slot)
{
    unsigned int port = ((unsigned int)p[2] << 8) | p[3];
    const unsigned char *ip = p + 6;
    uint32_t h = 2166136261u;
    for (Py_ssize_t k = 0; k < ip_len; k++) {
        h = (h ^ ip[k]) * 16777619u;
    }
    h = (h ^ port) * 16777619u;
    CachedKey *entry = &self->keys[(h ^ (h >> 16)) % KEY_CACHE];
    *slot = entry;
    *cached = entry->key != NULL && entry->ip_len == ip_len && entry->port == port
        && memcmp(entry->ip, ip, ip_len) == 0;
    if (*cached) {
        return Py_NewRef(entry->key);
    }
    PyObject *key = Py_BuildValue("(y#I)", (const char *)ip, ip_len, port);
    if (key != NULL) {
        Py_XSETREF(entry->key, Py_NewRef(key));
        memcpy(entry->ip, ip, ip_len);
        entry->ip_len = ip_len;
        entry->port = port;
    }
    return key;
}

/* The table's entry for the route key of the parsed header at p (borrowed), or NULL (an exception set or
 * not). A key made afresh whose flow is found is replaced in the cache by the flow's own route_key (the
 * table's key object, equal to it), so the client's next lookups match the table's key by identity
 * instead of comparing tuples. */
static PyObject *
lookup_flow(Batch *self, const unsigned char *p, Py_ssize_t ip_len)
{
    int cached;
    CachedKey *entry;
    PyObject *key = route_key(self, p, ip_len, &cached, &entry);
    if (key == NULL) {
        return NULL;
    }
    PyObject *flow = PyDict_GetItemWithError(self->table, key);
    if (flow != NULL && !cached) {
        PyObject *own = PyObject_GetAttr(flow, str_route_key);
        if (own != NULL && PyTuple_CheckExact(own) && own != key && PyObject_RichCompareBool(own, key, Py_EQ) == 1) {
            Py_SETREF(entry->key, own);
        } else {
            Py_XDECREF(own);
            PyErr_Clear();
        }
    }
    Py_DECREF(key);
    return flow;
}

/* (payload offset, end, source, flow) for the datagram at buffer[at:at+n] from source (borrowed). A
 * version 1 header without a hop count, whose key is in the table: the payload's offset and that
 * entry. Anything else: (at, at+n, source, None), for the caller's own checks. */
static PyObject *
routed_item(Batch *self, Py_ssize_t at, Py_ssize_t n, PyObject *source)
{
    const unsigned char *p = (const unsigned char *)self->view.buf + at;
    Py_ssize_t size, ip_len;
    char why[80];
    PyObject *flow = Py_None;
    Py_ssize_t payload = at;
    if (parse_header(p, n, &size, &ip_len, why, sizeof why) == 0 && !(p[1] & FLAG_HOPS)) {
        PyObject *found = lookup_flow(self, p, ip_len);
        if (found != NULL) {
            flow = found;
            payload = at + size;
        } else if (PyErr_Occurred()) {
            return NULL;
        }
    }
    PyObject *start = PyLong_FromSsize_t(payload);
    PyObject *end = PyLong_FromSsize_t(at + n);
    PyObject *item = (start && end) ? PyTuple_New(4) : NULL;
    if (!item) {
        Py_XDECREF(start);
        Py_XDECREF(end);
        return NULL;
    }
    PyTuple_SET_ITEM(item, 0, start);
    PyTuple_SET_ITEM(item, 1, end);
    PyTuple_SET_ITEM(item, 2, Py_NewRef(source));
    PyTuple_SET_ITEM(item, 3, Py_NewRef(flow));
    return item;
}

PyDoc_STRVAR(route_by_doc,
"route_by(table) -> None\n\n"
"The dict recv_routed() and route() look route keys (client ip packed, client port) up in.\n"
"It stays the caller's: the batch only reads it.");

static PyObject *
Batch_route_by(Batch *self, PyObject *table)
{
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "route_by() needs a dict");
        return NULL;
    }
    Py_XSETREF(self->table, Py_NewRef(table));
    Py_RETURN_NONE;
}

PyDoc_STRVAR(route_doc,
"route(offset, length, source) -> (payload offset, end, source, flow)\n\n"
"What recv_routed() gives for a datagram already at buffer[offset:offset+length] (tests, fakes).");

static PyObject *
Batch_route(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "route(offset, length, source)");
        return NULL;
    }
    if (self->table == NULL) {
        PyErr_SetString(PyExc_TypeError, "route() before route_by()");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (at < 0 || n < 0 || at > self->view.len - n) {
        PyErr_SetString(PyExc_ValueError, "range outside the buffer");
        return NULL;
    }
    return routed_item(self, at, n, args[2]);
}

PyDoc_STRVAR(recv_doc,
"recv(fd) -> list of (offset, length, (host, port))\n\n"
"One recvmmsg of up to count datagrams, datagram i into slot i at i*stride + headroom\n"
"(offset). [] when nothing is waiting; OSError for any other error (nothing received).\n"
"A datagram longer than a slot is dropped and counted in truncated.");

/* -- the forwarding fast paths: media on a confirmed flow, queued without a Python call per datagram ----
 *
 * Each reads the relay's own objects (its flow table's dicts and the Flow found there) and decides exactly
 * as the relay's Python hot path (Relay.client_batch, Relay.transceiver_batch) does; whatever it does not
 * queue (0) is left to that Python, which makes every check and every decision beyond it. They never
 * raise: an error is cleared and the datagram left to Python, whose own attempt logs it. */

/* The client datagram at buffer[at:at+n] from source: if table (the relay's confirmed flows, by client
 * address) has its flow, it is not STUN-range (first byte above 3), 1..max_payload bytes long, write the
 * flow's header in front of it, queue it for the flow's next hop and stamp the flow's last_seen with now. */
static int
queue_media(Batch *self, Py_ssize_t at, Py_ssize_t n, PyObject *source, PyObject *table, PyObject *now,
            Py_ssize_t max_payload)
{
    unsigned char *p = (unsigned char *)self->view.buf + at;
    if (n == 0 || n > max_payload || p[0] <= 3 || self->queued >= self->count) {
        return 0;
    }
    PyObject *flow = PyDict_GetItemWithError(table, source);
    if (flow == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_INCREF(flow);
    int queued = 0;
    PyObject *header = flow_get(flow, A_HEADER);
    PyObject *hop = header ? flow_get(flow, A_NEXT_HOP) : NULL;
    if (hop != NULL && PyBytes_CheckExact(header) && PyBytes_GET_SIZE(header) <= self->headroom) {
        Py_ssize_t start = at - PyBytes_GET_SIZE(header);
        memcpy(p - PyBytes_GET_SIZE(header), PyBytes_AS_STRING(header), (size_t)PyBytes_GET_SIZE(header));
        if (queue_one(self, start, at, at + n, hop) == 0) {
            queued = 1;
            if (flow_set(flow, A_LAST_SEEN, now) < 0) {
                PyErr_Clear();
            }
            /* Counted for the relay's cross_worker_packets (a flow to another worker's transceiver). */
            PyObject *foreign = flow_get(flow, A_FOREIGN);
            if (foreign != NULL && PyObject_IsTrue(foreign) == 1) {
                self->foreign++;
            }
            Py_XDECREF(foreign);
        }
    }
    PyErr_Clear();
    Py_XDECREF(hop);
    Py_XDECREF(header);
    Py_DECREF(flow);
    return queued;
}

/* The transceiver datagram at buffer[at:at+n] from source: a version 1 header without a hop count whose
 * route key is in route_by()'s table, for a flow that is confirmed, whose next hop is source, whose client
 * talks to this relay (return_via None) and whose source host sources (the relay's cache of allowed
 * senders) holds as allowed: queue its payload, where it lies, for the flow's client. */
static int
queue_return(Batch *self, Py_ssize_t at, Py_ssize_t n, PyObject *source, PyObject *sources)
{
    const unsigned char *p = (const unsigned char *)self->view.buf + at;
    Py_ssize_t size, ip_len;
    char why[80];
    if (self->queued >= self->count || !PyTuple_Check(source) || PyTuple_GET_SIZE(source) < 1
        || parse_header(p, n, &size, &ip_len, why, sizeof why) < 0 || (p[1] & FLAG_HOPS)) {
        return 0;
    }
    PyObject *flow = lookup_flow(self, p, ip_len);
    if (flow == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_INCREF(flow);
    int queued = 0;
    PyObject *hop = NULL, *confirmed = NULL, *via = NULL, *client = NULL;
    hop = flow_get(flow, A_NEXT_HOP);
    if (hop == NULL || PyObject_RichCompareBool(hop, source, Py_EQ) != 1) {
        goto done;
    }
    confirmed = flow_get(flow, A_CONFIRMED);
    if (confirmed == NULL || PyObject_IsTrue(confirmed) != 1) {
        goto done;
    }
    via = flow_get(flow, A_RETURN_VIA);
    if (via != Py_None) {
        goto done;
    }
    PyObject *allowed = PyDict_GetItemWithError(sources, PyTuple_GET_ITEM(source, 0));
    if (allowed == NULL || PyObject_IsTrue(allowed) != 1) {
        goto done;
    }
    client = flow_get(flow, A_CLIENT);
    if (client != NULL && queue_one(self, at + size, at + size, at + n, client) == 0) {
        queued = 1;
    }
done:
    PyErr_Clear();
    Py_XDECREF(client);
    Py_XDECREF(via);
    Py_XDECREF(confirmed);
    Py_XDECREF(hop);
    Py_DECREF(flow);
    return queued;
}

enum { RECV_PLAIN, RECV_ROUTED, RECV_MEDIA, RECV_RETURNS };

typedef struct {
    PyObject *table;  /* RECV_MEDIA: the confirmed flows */
    PyObject *now;
    Py_ssize_t max_payload;
    PyObject *sources;  /* RECV_RETURNS */
} FastArgs;

static PyObject *
receive(Batch *self, PyObject *arg, int mode, const FastArgs *fast_args)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0) {
        return NULL;
    }
    if ((mode == RECV_ROUTED || mode == RECV_RETURNS) && self->table == NULL) {
        PyErr_SetString(PyExc_TypeError, "recv_routed() before route_by()");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->count; i++) {
        self->rx_msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        self->rx_msgs[i].msg_hdr.msg_flags = 0;
    }
    int got;
    self->received = 0;
    do {
        got = recvmmsg(fd, self->rx_msgs, (unsigned int)self->count, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return PyList_New(0);
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->received = got;
    PyObject *list = PyList_New(0);
    if (!list) {
        return NULL;
    }
    /* The fast paths take datagrams until the first they leave: that one and every one after it go to the
     * caller, in order, so nothing overtakes a datagram the relay's Python handles. */
    int fast = mode == RECV_MEDIA || mode == RECV_RETURNS;
    for (int i = 0; i < got; i++) {
        struct mmsghdr *m = &self->rx_msgs[i];
        if (m->msg_hdr.msg_flags & MSG_TRUNC) {
            self->truncated++;
            continue;
        }
        PyObject *addr = source_tuple(self, &self->rx_addrs[i]);
        if (!addr) {
            Py_DECREF(list);
            return NULL;
        }
        Py_ssize_t at = i * self->stride + self->headroom;
        Py_ssize_t n = (Py_ssize_t)m->msg_len;
        if (fast) {
            int queued = mode == RECV_MEDIA
                ? queue_media(self, at, n, addr, fast_args->table, fast_args->now, fast_args->max_payload)
                : queue_return(self, at, n, addr, fast_args->sources);
            if (queued) {
                Py_DECREF(addr);
                continue;
            }
            fast = 0;
        }
        PyObject *item;
        if (mode == RECV_ROUTED || mode == RECV_RETURNS) {
            item = routed_item(self, at, n, addr);
            Py_DECREF(addr);
        } else {
            PyObject *offset = PyLong_FromSsize_t(at);
            PyObject *length = PyLong_FromSsize_t(n);
            item = (offset && length) ? PyTuple_New(3) : NULL;
            if (!item) {
                Py_XDECREF(offset);
                Py_XDECREF(length);
                Py_DECREF(addr);
            } else {
                PyTuple_SET_ITEM(item, 0, offset);
                PyTuple_SET_ITEM(item, 1, length);
                PyTuple_SET_ITEM(item, 2, addr);
            }
        }
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        if (PyList_Append(list, item) < 0) {
            Py_DECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static PyObject *
Batch_recv(Batch *self, PyObject *arg)
{
    return receive(self, arg, RECV_PLAIN, NULL);
}

PyDoc_STRVAR(recv_media_doc,
"recv_media(fd, table, now, max_payload) -> list of (offset, length, (host, port))\n\n"
"recv() for client datagrams that queues media on confirmed flows itself (the relay's hot path):\n"
"a datagram whose source is in table (the relay's confirmed flows, by client address), whose\n"
"first byte is above 3 (not STUN) and whose length is 1..max_payload gets its flow's header\n"
"written in front of it, is queued for the flow's next_hop, and the flow's last_seen is set to\n"
"now (and foreign counts it if the flow's foreign is true). From the first datagram it does not queue on, every datagram is returned as recv() would,\n"
"in order, for the caller. received says how many the call took.");

static int
parse_fast(PyObject *const *args, Py_ssize_t first, FastArgs *out)
{
    out->table = args[first];
    out->now = args[first + 1];
    out->max_payload = PyLong_AsSsize_t(args[first + 2]);
    if (out->max_payload == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (!PyDict_Check(out->table)) {
        PyErr_SetString(PyExc_TypeError, "table must be a dict");
        return -1;
    }
    return 0;
}

static PyObject *
Batch_recv_media(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    FastArgs fast_args = {0};
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "recv_media(fd, table, now, max_payload)");
        return NULL;
    }
    if (parse_fast(args, 1, &fast_args) < 0) {
        return NULL;
    }
    return receive(self, args[0], RECV_MEDIA, &fast_args);
}

PyDoc_STRVAR(media_doc,
"media(offset, length, source, table, now, max_payload) -> bool\n\n"
"What recv_media() does with a datagram already at buffer[offset:offset+length]: True if it\n"
"queued it (tests, fakes, and the relay's datagrams that did not come through recv_media).");

static PyObject *
Batch_media(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    FastArgs fast_args = {0};
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "media(offset, length, source, table, now, max_payload)");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if ((at == -1 || n == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (parse_fast(args, 3, &fast_args) < 0) {
        return NULL;
    }
    if (at < self->headroom || n < 0 || at > self->view.len - n) {
        PyErr_SetString(PyExc_ValueError, "range outside the buffer (or without its header room)");
        return NULL;
    }
    return PyBool_FromLong(queue_media(self, at, n, args[2], fast_args.table, fast_args.now, fast_args.max_payload));
}

PyDoc_STRVAR(recv_returns_doc,
"recv_returns(fd, sources) -> list of (payload offset, end, (host, port), flow)\n\n"
"recv_routed() that queues transceivers' answers itself (the relay's return hot path): a datagram\n"
"whose flow recv_routed() would give is queued, its payload where it lies, for the flow's client\n"
"when the flow is confirmed, its next_hop is the source, its return_via is None and sources\n"
"(the relay's dict of senders it allows, by host) holds the source's host as allowed. From the\n"
"first datagram it does not queue on, every datagram is returned as recv_routed() would, in\n"
"order, for the caller. received says how many the call took.");

static PyObject *
Batch_recv_returns(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    FastArgs fast_args = {0};
    if (nargs != 2 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "recv_returns(fd, sources: dict)");
        return NULL;
    }
    fast_args.sources = args[1];
    return receive(self, args[0], RECV_RETURNS, &fast_args);
}

PyDoc_STRVAR(forward_doc,
"forward(offset, length, source, sources) -> None, or what route() gives\n\n"
"What recv_returns() does with a datagram already at buffer[offset:offset+length]: None if it\n"
"queued it, else route()'s item for the caller (tests, fakes).");

static PyObject *
Batch_forward(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "forward(offset, length, source, sources: dict)");
        return NULL;
    }
    if (self->table == NULL) {
        PyErr_SetString(PyExc_TypeError, "forward() before route_by()");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if ((at == -1 || n == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (at < 0 || n < 0 || at > self->view.len - n) {
        PyErr_SetString(PyExc_ValueError, "range outside the buffer");
        return NULL;
    }
    if (queue_return(self, at, n, args[2], args[3])) {
        Py_RETURN_NONE;
    }
    return routed_item(self, at, n, args[2]);
}

PyDoc_STRVAR(recv_routed_doc,
"recv_routed(fd) -> list of (payload offset, end, (host, port), flow)\n\n"
"recv() for encapsulated datagrams (the relay's return direction): each header is checked as\n"
"voiceedge.wire.encap checks it. A version 1 header without a hop count whose route key\n"
"(client ip packed, client port) is in route_by()'s table gives the payload's offset and the\n"
"table's entry; any other datagram gives its own offset (its slot's start plus headroom) and\n"
"None. end is where the datagram ends. Errors as recv().");

static PyObject *
Batch_recv_routed(Batch *self, PyObject *arg)
{
    return receive(self, arg, RECV_ROUTED, NULL);
}

/* Fill *ss from (host, port), host a numeric IPv4 or IPv6 address. */
static int
parse_address(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (!host) {
        return -1;
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    if (strchr(host, ':') == NULL) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not a numeric IPv4 address: %s", host);
            return -1;
        }
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof *sin;
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not a numeric IPv6 address: %s", host);
            return -1;
        }
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof *sin6;
    }
    return 0;
}

/* addr ((host, port), numeric) into *ss and *len, through the destination cache for a tuple (the same
 * tuple object each time: a session's destination, a relay's address); -1 with an exception set if it
 * is not an address. */
static int
destination_of(Batch *self, PyObject *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    if (!PyTuple_CheckExact(addr)) {
        return parse_address(addr, ss, len);
    }
    CachedDestination *entry = &self->destinations[((uintptr_t)addr >> 4) % DESTINATION_CACHE];
    if (entry->tuple != addr) {
        if (parse_address(addr, &entry->addr, &entry->len) < 0) {
            Py_CLEAR(entry->tuple);
            return -1;
        }
        Py_XSETREF(entry->tuple, Py_NewRef(addr));
    }
    *len = entry->len;
    memcpy(ss, &entry->addr, entry->len);
    return 0;
}

/* Queue buffer[start:end] (payload from payload_start) for addr; -1 with an exception set if it cannot. */
static int
queue_one(Batch *self, Py_ssize_t start, Py_ssize_t payload_start, Py_ssize_t end, PyObject *addr)
{
    if (start < 0 || start > payload_start || payload_start > end || end > self->view.len) {
        PyErr_SetString(PyExc_ValueError, "range outside the buffer");
        return -1;
    }
    if (self->queued >= self->count) {
        PyErr_SetString(PyExc_BufferError, "the send queue is full");
        return -1;
    }
    Py_ssize_t i = self->queued;
    socklen_t len;
    if (destination_of(self, addr, &self->tx_addrs[i], &len) < 0) {
        return -1;
    }
    self->tx_msgs[i].msg_hdr.msg_namelen = len;
    self->tx_iov[i].iov_base = (char *)self->view.buf + start;
    self->tx_iov[i].iov_len = (size_t)(end - start);
    self->tx_payload[i] = end - payload_start;
    self->queued = i + 1;
    return 0;
}

PyDoc_STRVAR(queue_doc,
"queue(start, payload_start, end, addr) -> None\n\n"
"Queue buffer[start:end] for addr ((host, port), numeric). Its payload, counted by\n"
"send(), is buffer[payload_start:end]. BufferError when count datagrams are queued.");

static PyObject *
Batch_queue(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "queue(start, payload_start, end, addr)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[0]);
    Py_ssize_t payload_start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (queue_one(self, start, payload_start, end, args[3]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(send_doc,
"send(fd) -> (sent, payload_bytes, failed)\n\n"
"sendmmsg the queue on fd and empty it. A datagram the kernel refuses is skipped and\n"
"counted in failed (its errno in last_errno); the rest still go. payload_bytes sums the\n"
"payloads of the datagrams sent. With segment set (the default), consecutive datagrams of\n"
"one length to one destination (the last of a run may be shorter) leave as one UDP_SEGMENT\n"
"(GSO) message of the same sendmmsg; a run the kernel refuses is sent again a datagram at\n"
"a time, and where the socket cannot segment (EIO, EOPNOTSUPP, ENOPROTOOPT) segment is\n"
"turned off.");

/* sendmmsg queue entries [at, n) a datagram per message; add to *sent, *bytes, *failed. */
static void
send_each(Batch *self, int fd, Py_ssize_t at, Py_ssize_t n, Py_ssize_t *sent, Py_ssize_t *bytes, Py_ssize_t *failed)
{
    while (at < n) {
        int r = sendmmsg(fd, &self->tx_msgs[at], (unsigned int)(n - at), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            /* The datagram at `at` failed: skip it, send the rest. */
            self->last_errno = errno;
            (*failed)++;
            at++;
            continue;
        }
        for (int k = 0; k < r; k++) {
            *bytes += self->tx_payload[at + k];
        }
        *sent += r;
        at += r;
    }
}

/* Whether queue entries i and j go to the same address. */
static int
same_destination(const Batch *self, Py_ssize_t i, Py_ssize_t j)
{
    socklen_t len = self->tx_msgs[i].msg_hdr.msg_namelen;
    return len == self->tx_msgs[j].msg_hdr.msg_namelen && memcmp(&self->tx_addrs[i], &self->tx_addrs[j], len) == 0;
}

/* Queue entries [0, n) as messages: a run of datagrams of one length to one destination (the last may be
 * shorter) is one message with UDP_SEGMENT, anything else one message per datagram. The count. */
static Py_ssize_t
segment_runs(Batch *self, Py_ssize_t n)
{
    Py_ssize_t messages = 0;
    for (Py_ssize_t i = 0; i < n;) {
        size_t size = self->tx_iov[i].iov_len;
        size_t total = size;
        Py_ssize_t j = i + 1;
        if (size > 0) {
            while (j < n && j - i < GSO_MAX_SEGMENTS && same_destination(self, i, j)) {
                size_t next = self->tx_iov[j].iov_len;
                if (next == 0 || next > size || total + next > GSO_MAX_BYTES) {
                    break;
                }
                total += next;
                j++;
                if (next < size) {
                    break;  /* only the last datagram of a run may be shorter */
                }
            }
        }
        struct msghdr *m = &self->gso_msgs[messages].msg_hdr;
        *m = self->tx_msgs[i].msg_hdr;
        m->msg_iovlen = (size_t)(j - i);
        if (j - i > 1) {
            SegmentControl *control = &self->gso_control[messages];
            memset(control, 0, sizeof *control);
            m->msg_control = control->space;
            m->msg_controllen = sizeof control->space;
            struct cmsghdr *c = CMSG_FIRSTHDR(m);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segment_size = (uint16_t)size;
            memcpy(CMSG_DATA(c), &segment_size, sizeof segment_size);
        } else {
            m->msg_control = NULL;
            m->msg_controllen = 0;
        }
        self->gso_first[messages++] = i;
        i = j;
    }
    self->gso_first[messages] = n;
    return messages;
}

/* sendmmsg the queue's n entries on fd (GSO runs if segment is set); add to *sent, *bytes, *failed. */
static void
send_queue(Batch *self, int fd, Py_ssize_t n, Py_ssize_t *sent_out, Py_ssize_t *bytes_out, Py_ssize_t *failed_out)
{
    Py_ssize_t sent = 0, failed = 0, bytes = 0;
    if (!self->segment || n < 2) {
        send_each(self, fd, 0, n, &sent, &bytes, &failed);
        *sent_out += sent;
        *bytes_out += bytes;
        *failed_out += failed;
        return;
    }
    Py_ssize_t messages = segment_runs(self, n);
    Py_ssize_t g = 0;
    while (g < messages) {
        int r = sendmmsg(fd, &self->gso_msgs[g], (unsigned int)(messages - g), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            Py_ssize_t first = self->gso_first[g], end = self->gso_first[g + 1];
            if (end - first > 1) {
                /* A run refused whole (a full buffer, a segment above the path's MTU, no checksum offload):
                 * a datagram at a time instead, each failing or not as it would have without GSO. */
                if (errno == EIO || errno == EOPNOTSUPP || errno == ENOPROTOOPT) {
                    self->segment = 0;
                }
                send_each(self, fd, first, end, &sent, &bytes, &failed);
            } else {
                self->last_errno = errno;
                failed++;
            }
            g++;
            continue;
        }
        for (int k = 0; k < r; k++) {
            Py_ssize_t first = self->gso_first[g + k], end = self->gso_first[g + k + 1];
            for (Py_ssize_t d = first; d < end; d++) {
                bytes += self->tx_payload[d];
            }
            sent += end - first;
            if (end - first > 1) {
                self->segmented += end - first;
            }
        }
        g += r;
    }
    *sent_out += sent;
    *bytes_out += bytes;
    *failed_out += failed;
}

static PyObject *
Batch_send(Batch *self, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    Py_ssize_t n = self->queued;
    self->queued = 0;
    if (fd < 0) {
        /* Not a socket (not started): every datagram fails, as sendto would. */
        PyErr_Clear();
        self->last_errno = EBADF;
        return Py_BuildValue("(nnn)", (Py_ssize_t)0, (Py_ssize_t)0, n);
    }
    Py_ssize_t sent = 0, failed = 0, bytes = 0;
    send_queue(self, fd, n, &sent, &bytes, &failed);
    return Py_BuildValue("(nnn)", sent, bytes, failed);
}

PyDoc_STRVAR(send_list_doc,
"send_list(fd, datagrams) -> (sent, bytes, failed)\n\n"
"sendmmsg every (data, (host, port)) of the list datagrams (data: bytes), count at a time,\n"
"straight from the bytes objects (nothing is copied or queued in the buffer; the queue must be\n"
"empty). As send(): a datagram the kernel refuses is skipped and counted in failed (its errno\n"
"in last_errno), runs to one destination go as GSO sends while segment is set. An entry that is\n"
"not (bytes, numeric address) is skipped and counted in failed too (last_errno EINVAL).");

static PyObject *
Batch_send_list(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send_list(fd, datagrams: list)");
        return NULL;
    }
    if (self->queued) {
        PyErr_SetString(PyExc_BufferError, "send_list() with datagrams queued: send() them first");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    PyObject *list = args[1];
    Py_ssize_t total = PyList_GET_SIZE(list);
    if (fd < 0) {
        PyErr_Clear();
        self->last_errno = EBADF;
        return Py_BuildValue("(nnn)", (Py_ssize_t)0, (Py_ssize_t)0, total);
    }
    Py_ssize_t sent = 0, failed = 0, bytes = 0;
    /* Nothing below runs Python code, so the list and its items stay as they are. */
    for (Py_ssize_t at = 0; at < total;) {
        Py_ssize_t n = 0;
        for (; at < total && n < self->count; at++) {
            PyObject *item = PyList_GET_ITEM(list, at);
            PyObject *data;
            if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2
                || !PyBytes_CheckExact(data = PyTuple_GET_ITEM(item, 0))) {
                self->last_errno = EINVAL;
                failed++;
                continue;
            }
            socklen_t len;
            if (destination_of(self, PyTuple_GET_ITEM(item, 1), &self->tx_addrs[n], &len) < 0) {
                PyErr_Clear();
                self->last_errno = EINVAL;
                failed++;
                continue;
            }
            self->tx_msgs[n].msg_hdr.msg_namelen = len;
            self->tx_iov[n].iov_base = PyBytes_AS_STRING(data);
            self->tx_iov[n].iov_len = (size_t)PyBytes_GET_SIZE(data);
            self->tx_payload[n] = PyBytes_GET_SIZE(data);
            n++;
        }
        send_queue(self, fd, n, &sent, &bytes, &failed);
    }
    return Py_BuildValue("(nnn)", sent, bytes, failed);
}

PyDoc_STRVAR(take_doc,
"take() -> list of (bytes, (host, port))\n\n"
"Copies of the queued datagrams and their destinations, and empty the queue (for\n"
"tests and fakes: what send() would have sent).");

static PyObject *
Batch_take(Batch *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = self->queued;
    self->queued = 0;
    PyObject *list = PyList_New(0);
    if (!list) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *addr = address_tuple(&self->tx_addrs[i]);
        if (!addr) {
            Py_DECREF(list);
            return NULL;
        }
        PyObject *item = Py_BuildValue(
            "(y#N)", (const char *)self->tx_iov[i].iov_base, (Py_ssize_t)self->tx_iov[i].iov_len, addr);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static PyMethodDef Batch_methods[] = {
    {"recv", (PyCFunction)Batch_recv, METH_O, recv_doc},
    {"recv_routed", (PyCFunction)Batch_recv_routed, METH_O, recv_routed_doc},
    {"recv_media", (PyCFunction)(void (*)(void))Batch_recv_media, METH_FASTCALL, recv_media_doc},
    {"media", (PyCFunction)(void (*)(void))Batch_media, METH_FASTCALL, media_doc},
    {"recv_returns", (PyCFunction)(void (*)(void))Batch_recv_returns, METH_FASTCALL, recv_returns_doc},
    {"forward", (PyCFunction)(void (*)(void))Batch_forward, METH_FASTCALL, forward_doc},
    {"route_by", (PyCFunction)Batch_route_by, METH_O, route_by_doc},
    {"route", (PyCFunction)(void (*)(void))Batch_route, METH_FASTCALL, route_doc},
    {"queue", (PyCFunction)(void (*)(void))Batch_queue, METH_FASTCALL, queue_doc},
    {"send", (PyCFunction)Batch_send, METH_O, send_doc},
    {"send_list", (PyCFunction)(void (*)(void))Batch_send_list, METH_FASTCALL, send_list_doc},
    {"take", (PyCFunction)Batch_take, METH_NOARGS, take_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Batch_members[] = {
    {"count", T_PYSSIZET, offsetof(Batch, count), READONLY, "datagrams per recv() and per send()"},
    {"stride", T_PYSSIZET, offsetof(Batch, stride), READONLY, "bytes per slot"},
    {"headroom", T_PYSSIZET, offsetof(Batch, headroom), READONLY, "bytes in front of each datagram"},
    {"queued", T_PYSSIZET, offsetof(Batch, queued), READONLY, "datagrams waiting for send()"},
    {"received", T_PYSSIZET, offsetof(Batch, received), READONLY, "datagrams the last recv call took from the socket"},
    {"foreign", T_LONGLONG, offsetof(Batch, foreign), READONLY,
     "media recv_media() and media() queued for flows whose foreign attribute is true"},
    {"truncated", T_LONGLONG, offsetof(Batch, truncated), READONLY, "datagrams dropped: longer than a slot"},
    {"last_errno", T_INT, offsetof(Batch, last_errno), READONLY, "errno of the last datagram send() skipped"},
    {"segment", T_INT, offsetof(Batch, segment), 0,
     "1: send() sends runs of equal datagrams to one destination as one UDP_SEGMENT (GSO) message"},
    {"segmented", T_LONGLONG, offsetof(Batch, segmented), READONLY, "datagrams send() sent inside UDP_SEGMENT messages"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "voiceedge.relay._batchio.Batch",
    .tp_doc = PyDoc_STR("Batch(buffer, count, stride, headroom): recvmmsg into buffer's slots, sendmmsg from them."),
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Batch_init,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_members = Batch_members,
};

static PyMethodDef module_methods[] = {
    {"peek_client", batchio_peek_client, METH_O, peek_client_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef batchio_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "voiceedge.relay._batchio",
    .m_doc = "Batched UDP datagram I/O (recvmmsg, sendmmsg) for the relay.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__batchio(void)
{
    if (PyType_Ready(&BatchType) < 0) {
        return NULL;
    }
    struct { PyObject **name; const char *text; } names[] = {
        {&str_header, "header"}, {&str_next_hop, "next_hop"}, {&str_last_seen, "last_seen"},
        {&str_confirmed, "confirmed"}, {&str_return_via, "return_via"}, {&str_client, "client"},
        {&str_route_key, "route_key"}, {&str_foreign, "foreign"},
    };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        if (*names[k].name == NULL && (*names[k].name = PyUnicode_InternFromString(names[k].text)) == NULL) {
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&batchio_module);
    if (!m) {
        return NULL;
    }
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
