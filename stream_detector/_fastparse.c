/* The consume path's parse of engagement events, compiled (stream_detector/events.py).
 *
 * parse_records(records, now, max_bytes, max_count, max_future_s) reads the value, key,
 * offset and timestamp of each Kafka record and ACCEPTS a record only when it is, beyond
 * doubt, an event that events.parse_event accepts as it is: an ASCII JSON object with the
 * contract's fields in their plain forms (a string video_id without escapes, ts an epoch
 * number or a "YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z|+HH:MM|-HH:MM]" string, integer counts,
 * no field given twice, no \u escape anywhere). Everything else (a rejection, but also a
 * lenient form such as a null metric, 3.0 or a non-ASCII category) is left to the Python
 * parser, which decides and names the reason: so the two can only differ on what this file
 * accepts, and tests/test_fastparse.py compares them on valid, hostile and mutated corpora.
 *
 * Event 1.1's optional user_id and channel_id are taken in the same plain form as video_id.
 *
 * Returns (status, video_ids, ts, counts, published, offsets, vidx, arrival, users, channels):
 *   status      bytes, one per record: bit 0 set = left to Python, bit 1 = record key set
 *               and not the video id's bytes (the producer contract's key)
 *   video_ids   list: the id (a str shared by the records of one video) or None
 *   ts          bytes: float64 per record, epoch seconds (0 where left to Python)
 *   counts      bytes: int64 x 4 per record, views/likes/comments/shares
 *   published   bytes: float64 per record, NaN when the record has none
 *   offsets     bytes: int64 per record, its Kafka offset
 *   vidx        bytes: int32 per record, the position of its id in `arrival` (-1: Python's)
 *   arrival     dict: video id -> newest Kafka timestamp (> 0) among its accepted records
 *   users       list: the user_id of each accepted record or None; None when no record has one
 *   channels    list: the channel_id (one str per distinct id) or None; None when none has one
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MIN_TS 946684800.0 /* 2000-01-01T00:00:00Z, events.MIN_TS */
#define MAX_VIDEO_ID_CHARS 256
#define MAX_DEPTH 32       /* deeper unknown values are left to Python */
#define MAX_NUMBER_CHARS 64

#define ST_PYTHON 1
#define ST_KEY_MISMATCH 2

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Cursor;

typedef struct {
    const unsigned char *s; /* string contents, between the quotes */
    Py_ssize_t n;
    int escaped;
} Str;

typedef struct {
    const unsigned char *s;
    Py_ssize_t n;
    int integral; /* no fraction, no exponent */
    int negative;
} Num;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* A JSON string at c->p (on its opening quote). \u escapes are refused: a key spelled with
 * them could be a known field, which only the Python parser's full check sees. */
static int scan_string(Cursor *c, Str *out) {
    const unsigned char *p = c->p + 1, *end = c->end;
    int escaped = 0;
    out->s = p;
    while (p < end) {
        unsigned char ch = *p;
        if (ch == '"') {
            out->n = p - out->s;
            out->escaped = escaped;
            c->p = p + 1;
            return 1;
        }
        if (ch < 0x20)
            return 0;
        if (ch == '\\') {
            if (p + 1 >= end)
                return 0;
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                escaped = 1;
                p += 2;
                continue;
            default:
                return 0;
            }
        }
        p++;
    }
    return 0;
}

static inline int is_digit(unsigned char ch) { return ch >= '0' && ch <= '9'; }

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(Cursor *c, Num *out) {
    const unsigned char *p = c->p, *end = c->end;
    out->s = p;
    out->integral = 1;
    out->negative = 0;
    if (p < end && *p == '-') {
        out->negative = 1;
        p++;
    }
    if (p >= end || !is_digit(*p))
        return 0;
    if (*p == '0') {
        p++;
    } else {
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && *p == '.') {
        out->integral = 0;
        p++;
        if (p >= end || !is_digit(*p))
            return 0;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        out->integral = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return 0;
        while (p < end && is_digit(*p))
            p++;
    }
    out->n = p - out->s;
    c->p = p;
    return 1;
}

static int literal(Cursor *c, const char *word, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, word, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

/* After a member of an array or object: 1 when another follows (the cursor on it), 0 when
 * `close` ends the container (the cursor after it), -1 when neither does. */
static int next_item(Cursor *c, char close) {
    skip_ws(c);
    if (c->p >= c->end)
        return -1;
    if (*c->p == close) {
        c->p++;
        return 0;
    }
    if (*c->p != ',')
        return -1;
    c->p++;
    skip_ws(c);
    return 1;
}

/* Any JSON value (an unknown field's): checked, not kept. */
static int skip_value(Cursor *c, int depth) {
    Str s;
    Num num;
    if (c->p >= c->end || depth > MAX_DEPTH)
        return 0;
    switch (*c->p) {
    case '"':
        return scan_string(c, &s);
    case 't':
        return literal(c, "true", 4);
    case 'f':
        return literal(c, "false", 5);
    case 'n':
        return literal(c, "null", 4);
    case '[':
        c->p++;
        skip_ws(c);
        if (c->p < c->end && *c->p == ']') {
            c->p++;
            return 1;
        }
        for (;;) {
            if (!skip_value(c, depth + 1))
                return 0;
            int more = next_item(c, ']');
            if (more <= 0)
                return more == 0;
        }
    case '{':
        c->p++;
        skip_ws(c);
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            return 1;
        }
        for (;;) {
            if (c->p >= c->end || *c->p != '"' || !scan_string(c, &s))
                return 0;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':')
                return 0;
            c->p++;
            skip_ws(c);
            if (!skip_value(c, depth + 1))
                return 0;
            int more = next_item(c, '}');
            if (more <= 0)
                return more == 0;
        }
    default:
        if (*c->p == '-' || is_digit(*c->p))
            return scan_number(c, &num);
        return 0; /* NaN, Infinity (Python's json takes them): Python decides */
    }
}

/* A number token as Python's float() reads it (correctly rounded, locale-free). */
static int number_to_double(const Num *num, double *out) {
    if (num->integral && !num->negative && num->n <= 15) {
        int64_t v = 0;
        for (Py_ssize_t i = 0; i < num->n; i++)
            v = v * 10 + (num->s[i] - '0');
        *out = (double)v; /* exact below 2**53 */
        return 1;
    }
    char buf[MAX_NUMBER_CHARS + 1];
    if (num->n > MAX_NUMBER_CHARS)
        return 0;
    memcpy(buf, num->s, num->n);
    buf[num->n] = '\0';
    char *endp = NULL;
    double v = PyOS_string_to_double(buf, &endp, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (endp != buf + num->n || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

static int digits(const unsigned char *s, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

/* days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil) */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m) {
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return dim[m - 1];
}

/* "YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z|+HH:MM|-HH:MM]" as events._parse_time gives it
 * (datetime.fromisoformat; no zone = UTC): epoch microseconds / 10**6, correctly rounded
 * like timedelta.total_seconds(). Other ISO forms Python reads are left to it. */
static int parse_iso(const unsigned char *s, Py_ssize_t n, double *out) {
    int y, mo, d, h, mi, sec, us = 0;
    if (n < 19 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' ||
        s[16] != ':')
        return 0;
    if (!digits(s, 4, &y) || !digits(s + 5, 2, &mo) || !digits(s + 8, 2, &d) ||
        !digits(s + 11, 2, &h) || !digits(s + 14, 2, &mi) || !digits(s + 17, 2, &sec))
        return 0;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
        sec > 59)
        return 0;
    Py_ssize_t p = 19;
    if (p < n && s[p] == '.') {
        int k = 0;
        p++;
        while (p < n && is_digit(s[p])) {
            if (++k > 6)
                return 0;
            us = us * 10 + (s[p] - '0');
            p++;
        }
        if (k == 0)
            return 0;
        for (; k < 6; k++)
            us *= 10;
    }
    int64_t offset_s = 0;
    if (p < n) {
        if (s[p] == 'Z' && p + 1 == n) {
            p++;
        } else if ((s[p] == '+' || s[p] == '-') && p + 6 == n && s[p + 3] == ':') {
            int oh, om;
            if (!digits(s + p + 1, 2, &oh) || !digits(s + p + 4, 2, &om) || oh > 23 || om > 59)
                return 0;
            offset_s = (int64_t)oh * 3600 + om * 60;
            if (s[p] == '-')
                offset_s = -offset_s;
            p = n;
        } else {
            return 0;
        }
    }
    int64_t secs = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + mi * 60 + sec - offset_s;
    int64_t total_us = secs * 1000000 + us;
    *out = (double)total_us / 1e6; /* both exact for the years accepted (ts >= 2000 is checked) */
    return 1;
}

/* A time value: an epoch number or an ISO string without escapes. */
static int time_value(Cursor *c, double *out) {
    if (c->p >= c->end)
        return 0;
    if (*c->p == '"') {
        Str s;
        if (!scan_string(c, &s) || s.escaped)
            return 0;
        return parse_iso(s.s, s.n, out);
    }
    if (*c->p == '-' || is_digit(*c->p)) {
        Num num;
        if (!scan_number(c, &num))
            return 0;
        return number_to_double(&num, out);
    }
    return 0;
}

enum { F_VIDEO_ID, F_TS, F_VIEWS, F_LIKES, F_COMMENTS, F_SHARES, F_PUBLISHED, F_CATEGORY, F_REGION,
       F_USER_ID, F_CHANNEL_ID, F_UNKNOWN };

static int field_of(const Str *k) {
    if (k->escaped)
        return -1; /* a key with escapes: left to Python */
    const char *s = (const char *)k->s;
    switch (k->n) {
    case 2:
        return memcmp(s, "ts", 2) == 0 ? F_TS : F_UNKNOWN;
    case 5:
        if (memcmp(s, "views", 5) == 0)
            return F_VIEWS;
        if (memcmp(s, "likes", 5) == 0)
            return F_LIKES;
        return F_UNKNOWN;
    case 6:
        if (memcmp(s, "shares", 6) == 0)
            return F_SHARES;
        if (memcmp(s, "region", 6) == 0)
            return F_REGION;
        return F_UNKNOWN;
    case 7:
        return memcmp(s, "user_id", 7) == 0 ? F_USER_ID : F_UNKNOWN;
    case 10:
        return memcmp(s, "channel_id", 10) == 0 ? F_CHANNEL_ID : F_UNKNOWN;
    case 8:
        if (memcmp(s, "video_id", 8) == 0)
            return F_VIDEO_ID;
        if (memcmp(s, "comments", 8) == 0)
            return F_COMMENTS;
        if (memcmp(s, "category", 8) == 0)
            return F_CATEGORY;
        return F_UNKNOWN;
    case 12:
        return memcmp(s, "published_at", 12) == 0 ? F_PUBLISHED : F_UNKNOWN;
    default:
        return F_UNKNOWN;
    }
}

typedef struct {
    const unsigned char *vid;
    Py_ssize_t vid_n;
    const unsigned char *uid; /* NULL: none */
    Py_ssize_t uid_n;
    const unsigned char *cid; /* NULL: none */
    Py_ssize_t cid_n;
    double ts;
    double pub; /* NaN: none */
    int64_t counts[4];
} Parsed;

/* One record value: 1 with *ev filled when accepted, 0 when left to Python. */
static int parse_value(const unsigned char *buf, Py_ssize_t n, double limit, double max_future_s,
                       int64_t max_count, Parsed *ev) {
    /* ASCII only: UTF-8 validity (and what a non-ASCII id means) is the Python parser's */
    for (Py_ssize_t i = 0; i < n; i++)
        if (buf[i] & 0x80)
            return 0;
    Cursor c = {buf, buf + n};
    unsigned seen = 0;
    ev->pub = NAN;
    ev->uid = ev->cid = NULL;
    ev->uid_n = ev->cid_n = 0;
    ev->counts[0] = ev->counts[1] = ev->counts[2] = ev->counts[3] = 0;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return 0;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        return 0; /* no video_id */
    }
    for (;;) {
        Str key;
        if (c.p >= c.end || *c.p != '"' || !scan_string(&c, &key))
            return 0;
        int f = field_of(&key);
        if (f < 0)
            return 0;
        if (f != F_UNKNOWN) {
            if (seen & (1u << f))
                return 0; /* duplicate_field: Python names it */
            seen |= 1u << f;
        }
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':')
            return 0;
        c.p++;
        skip_ws(&c);
        if (c.p >= c.end)
            return 0;
        switch (f) {
        case F_VIDEO_ID: case F_USER_ID: case F_CHANNEL_ID: {
            Str s; /* a null user or channel id (absent, leniently) is Python's */
            if (*c.p != '"' || !scan_string(&c, &s) || s.escaped || s.n == 0 ||
                s.n > MAX_VIDEO_ID_CHARS)
                return 0;
            Py_ssize_t k = 0;
            while (k < s.n && s.s[k] == ' ')
                k++;
            if (k == s.n)
                return 0; /* only whitespace */
            if (f == F_VIDEO_ID) {
                ev->vid = s.s;
                ev->vid_n = s.n;
            } else if (f == F_USER_ID) {
                ev->uid = s.s;
                ev->uid_n = s.n;
            } else {
                ev->cid = s.s;
                ev->cid_n = s.n;
            }
            break;
        }
        case F_TS:
            if (!time_value(&c, &ev->ts))
                return 0;
            break;
        case F_PUBLISHED:
            if (*c.p == 'n') {
                if (!literal(&c, "null", 4))
                    return 0;
            } else if (!time_value(&c, &ev->pub)) {
                return 0;
            }
            break;
        case F_VIEWS: case F_LIKES: case F_COMMENTS: case F_SHARES: {
            Num num;
            if (*c.p == '-' || !is_digit(*c.p) || !scan_number(&c, &num) || !num.integral ||
                num.n > 18)
                return 0;
            int64_t v = 0;
            for (Py_ssize_t i = 0; i < num.n; i++)
                v = v * 10 + (num.s[i] - '0');
            if (v > max_count)
                return 0;
            ev->counts[f - F_VIEWS] = v;
            break;
        }
        case F_CATEGORY: case F_REGION: {
            Str s;
            if (*c.p == '"') {
                if (!scan_string(&c, &s))
                    return 0;
            } else if (!literal(&c, "null", 4)) {
                return 0; /* a non-string category is dropped by the validator: its call */
            }
            break;
        }
        default:
            if (!skip_value(&c, 1))
                return 0;
        }
        int more = next_item(&c, '}');
        if (more < 0)
            return 0;
        if (more == 0)
            break;
    }
    skip_ws(&c);
    if (c.p != c.end)
        return 0; /* extra data */
    if (!(seen & (1u << F_VIDEO_ID)) || !(seen & (1u << F_TS)))
        return 0;
    if (!(ev->ts >= MIN_TS && ev->ts <= limit))
        return 0;
    if (!isnan(ev->pub) && !(ev->pub >= MIN_TS && ev->pub <= limit && ev->pub <= ev->ts + max_future_s))
        return 0;
    return 1;
}

/* ---- video ids: one str per distinct id per call, and its newest arrival ---------------- */
typedef struct {
    const unsigned char *s; /* into `owner`'s bytes */
    Py_ssize_t n;
    uint64_t hash;
    PyObject *str;
    PyObject *owner;
    long long arrival;
    int32_t index; /* in first-seen order */
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
    Slot **order; /* the distinct ids, first seen first */
    Py_ssize_t count;
} IdTable;

static uint64_t fnv1a(const unsigned char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The id's slot (a new one holds a new str and a reference to the bytes it points into). */
static Slot *id_slot(IdTable *t, const unsigned char *s, Py_ssize_t n, PyObject *owner,
                     long long arrival) {
    uint64_t h = fnv1a(s, n);
    size_t i = (size_t)h & t->mask;
    for (;;) {
        Slot *slot = &t->slots[i];
        if (slot->str == NULL) {
            PyObject *str = PyUnicode_New(n, 127);
            if (str == NULL)
                return NULL;
            memcpy(PyUnicode_1BYTE_DATA(str), s, n);
            Py_INCREF(owner);
            slot->s = s;
            slot->n = n;
            slot->hash = h;
            slot->str = str;
            slot->owner = owner;
            slot->arrival = arrival;
            slot->index = (int32_t)t->count;
            t->order[t->count++] = slot;
            return slot;
        }
        if (slot->hash == h && slot->n == n && memcmp(slot->s, s, n) == 0) {
            if (arrival > slot->arrival)
                slot->arrival = arrival;
            return slot;
        }
        i = (i + 1) & t->mask;
    }
}

static PyObject *s_value, *s_key, *s_offset, *s_timestamp;

static int attr_int64(PyObject *rec, PyObject *name, long long *out) {
    PyObject *o = PyObject_GetAttr(rec, name);
    if (o == NULL)
        return 0;
    long long v = PyLong_AsLongLong(o);
    Py_DECREF(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = v;
    return 1;
}

/* One record: its row of the outputs, the id slot when accepted. -1 on a Python error. */
static int parse_one(PyObject *rec, IdTable *table, IdTable *channels, double limit,
                     Py_ssize_t max_bytes, long long max_count, double max_future_s, char *st,
                     double *ts, double *pub, int64_t *counts, Slot **slot_out, PyObject **user_out,
                     Slot **channel_out) {
    *slot_out = NULL;
    *user_out = NULL;
    *channel_out = NULL;
    *st = ST_PYTHON;
    *ts = 0.0;
    *pub = NAN;
    memset(counts, 0, 4 * sizeof(int64_t));
    PyObject *value = PyObject_GetAttr(rec, s_value);
    if (value == NULL)
        return -1;
    Parsed ev;
    if (!(PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) <= max_bytes &&
          parse_value((const unsigned char *)PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value),
                      limit, max_future_s, max_count, &ev))) {
        Py_DECREF(value);
        return 0;
    }
    long long stamp;
    PyObject *key = NULL;
    Slot *slot = NULL;
    if (!attr_int64(rec, s_timestamp, &stamp) || (key = PyObject_GetAttr(rec, s_key)) == NULL ||
        (slot = id_slot(table, ev.vid, ev.vid_n, value, stamp)) == NULL) {
        Py_XDECREF(key);
        Py_DECREF(value);
        return -1;
    }
    if (ev.uid != NULL) { /* accounts are many: a str each, not interned */
        *user_out = PyUnicode_New(ev.uid_n, 127);
        if (*user_out == NULL) {
            Py_DECREF(key);
            Py_DECREF(value);
            return -1;
        }
        memcpy(PyUnicode_1BYTE_DATA(*user_out), ev.uid, ev.uid_n);
    }
    if (ev.cid != NULL && (*channel_out = id_slot(channels, ev.cid, ev.cid_n, value, 0)) == NULL) {
        Py_CLEAR(*user_out);
        Py_DECREF(key);
        Py_DECREF(value);
        return -1;
    }
    Py_DECREF(value);
    char flags = 0;
    if (key != Py_None) { /* as `key != video_id.encode()` compares */
        int same = 0;
        if (PyBytes_Check(key))
            same = PyBytes_GET_SIZE(key) == ev.vid_n &&
                   memcmp(PyBytes_AS_STRING(key), ev.vid, ev.vid_n) == 0;
        else if (PyByteArray_Check(key))
            same = PyByteArray_GET_SIZE(key) == ev.vid_n &&
                   memcmp(PyByteArray_AS_STRING(key), ev.vid, ev.vid_n) == 0;
        if (!same)
            flags |= ST_KEY_MISMATCH;
    }
    Py_DECREF(key);
    *st = flags;
    *ts = ev.ts;
    *pub = ev.pub;
    memcpy(counts, ev.counts, 4 * sizeof(int64_t));
    *slot_out = slot;
    return 1;
}

static PyObject *parse_records(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *records;
    double now, max_future_s;
    Py_ssize_t max_bytes;
    long long max_count;
    if (!PyArg_ParseTuple(args, "OdnLd:parse_records", &records, &now, &max_bytes, &max_count,
                          &max_future_s))
        return NULL;
    PyObject *seq = PySequence_Fast(records, "records must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *status = PyBytes_FromStringAndSize(NULL, n);
    PyObject *ids = PyList_New(n);
    PyObject *ts = PyBytes_FromStringAndSize(NULL, n * sizeof(double));
    PyObject *counts = PyBytes_FromStringAndSize(NULL, n * 4 * sizeof(int64_t));
    PyObject *pub = PyBytes_FromStringAndSize(NULL, n * sizeof(double));
    PyObject *offsets = PyBytes_FromStringAndSize(NULL, n * sizeof(int64_t));
    PyObject *vidx = PyBytes_FromStringAndSize(NULL, n * sizeof(int32_t));
    PyObject *arrival = PyDict_New();
    PyObject *users = PyList_New(n);
    PyObject *chans = PyList_New(n);
    Py_ssize_t n_users = 0, n_chans = 0;
    PyObject *result = NULL;
    IdTable table = {NULL, 0, NULL, 0};
    IdTable channels = {NULL, 0, NULL, 0};
    if (!status || !ids || !ts || !counts || !pub || !offsets || !vidx || !arrival || !users || !chans)
        goto done;
    if (n > INT32_MAX / 4) {
        PyErr_SetString(PyExc_ValueError, "too many records for one call");
        goto done;
    }
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap <<= 1;
    table.slots = PyMem_Calloc(cap, sizeof(Slot));
    table.order = PyMem_Calloc(n + 1, sizeof(Slot *));
    channels.slots = PyMem_Calloc(cap, sizeof(Slot));
    channels.order = PyMem_Calloc(n + 1, sizeof(Slot *));
    if (table.slots == NULL || table.order == NULL || channels.slots == NULL || channels.order == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    table.mask = cap - 1;
    channels.mask = cap - 1;
    char *st = PyBytes_AS_STRING(status);
    double *ts_out = (double *)PyBytes_AS_STRING(ts);
    int64_t *counts_out = (int64_t *)PyBytes_AS_STRING(counts);
    double *pub_out = (double *)PyBytes_AS_STRING(pub);
    int64_t *off_out = (int64_t *)PyBytes_AS_STRING(offsets);
    int32_t *vidx_out = (int32_t *)PyBytes_AS_STRING(vidx);
    double limit = now + max_future_s;

    for (Py_ssize_t i = 0; i < n; i++) {
        long long offset;
        if (!attr_int64(items[i], s_offset, &offset))
            goto done;
        off_out[i] = offset;
        Slot *slot, *chan;
        PyObject *user;
        int got = parse_one(items[i], &table, &channels, limit, max_bytes, max_count, max_future_s,
                            st + i, ts_out + i, pub_out + i, counts_out + 4 * i, &slot, &user, &chan);
        if (got < 0)
            goto done;
        vidx_out[i] = got ? slot->index : -1;
        PyObject *id = got ? slot->str : Py_None;
        Py_INCREF(id);
        PyList_SET_ITEM(ids, i, id);
        if (user != NULL)
            n_users++;
        else
            user = Py_NewRef(Py_None);
        PyList_SET_ITEM(users, i, user); /* steals the new reference */
        PyObject *c = chan != NULL ? chan->str : Py_None;
        if (chan != NULL)
            n_chans++;
        PyList_SET_ITEM(chans, i, Py_NewRef(c));
    }
    for (Py_ssize_t k = 0; k < table.count; k++) {
        Slot *slot = table.order[k];
        if (slot->arrival <= 0)
            continue; /* no timestamp (-1): no arrival, as events.parse_records keeps it */
        PyObject *t = PyLong_FromLongLong(slot->arrival);
        if (t == NULL || PyDict_SetItem(arrival, slot->str, t) < 0) {
            Py_XDECREF(t);
            goto done;
        }
        Py_DECREF(t);
    }
    result = PyTuple_Pack(10, status, ids, ts, counts, pub, offsets, vidx, arrival,
                          n_users ? users : Py_None, n_chans ? chans : Py_None);
done:
    for (int t = 0; t < 2; t++) {
        IdTable *tb = t == 0 ? &table : &channels;
        if (tb->slots != NULL) {
            for (Py_ssize_t k = 0; k < tb->count; k++) {
                Py_DECREF(tb->order[k]->str);
                Py_DECREF(tb->order[k]->owner);
            }
            PyMem_Free(tb->slots);
        }
        PyMem_Free(tb->order);
    }
    Py_XDECREF(status);
    Py_XDECREF(ids);
    Py_XDECREF(ts);
    Py_XDECREF(counts);
    Py_XDECREF(pub);
    Py_XDECREF(offsets);
    Py_XDECREF(vidx);
    Py_XDECREF(arrival);
    Py_XDECREF(users);
    Py_XDECREF(chans);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_records", parse_records, METH_VARARGS,
     "parse_records(records, now, max_bytes, max_count, max_future_s) -> (status, video_ids, ts, "
     "counts, published, offsets, vidx, arrival, users, channels); see the module source's header."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastparse", "The consume path's event parse, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastparse(void) {
    s_value = PyUnicode_InternFromString("value");
    s_key = PyUnicode_InternFromString("key");
    s_offset = PyUnicode_InternFromString("offset");
    s_timestamp = PyUnicode_InternFromString("timestamp");
    if (!s_value || !s_key || !s_offset || !s_timestamp)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ST_PYTHON", ST_PYTHON) < 0 ||
        PyModule_AddIntConstant(m, "ST_KEY_MISMATCH", ST_KEY_MISMATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
