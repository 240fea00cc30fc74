/* ami-edge firmware bridge, protocol version 1. See ami_bridge.h. C99, no malloc, no stdio. */
#include "ami_bridge.h"

#include <string.h>

/* -------------------------------------------------------------------------------------------- CRC */
uint16_t ami_crc16_update(uint16_t crc, uint8_t byte) {
    int bit;
    crc ^= (uint16_t)((uint16_t)byte << 8);
    for (bit = 0; bit < 8; bit++) {
        crc = (uint16_t)((crc & 0x8000u) ? (((unsigned)crc << 1) ^ 0x1021u) : ((unsigned)crc << 1));
    }
    return crc;
}

uint16_t ami_crc16(const uint8_t *data, size_t len) {
    uint16_t crc = 0xFFFFu;
    size_t i;
    for (i = 0; i < len; i++) crc = ami_crc16_update(crc, data[i]);
    return crc;
}

/* ------------------------------------------------------------------------------------------- COBS */
size_t ami_cobs_encode(const uint8_t *in, size_t len, uint8_t *out) {
    size_t i, code_at = 0, o = 1;
    uint8_t code = 1;
    for (i = 0; i < len; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
        } else {
            out[o++] = in[i];
            code++;
            if (code == 0xFF && i + 1 < len) { /* canonical: open a block only if data follows */
                out[code_at] = code;
                code_at = o++;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    return o;
}

long ami_cobs_decode(const uint8_t *in, size_t len, uint8_t *out) {
    size_t i = 0, j = 0, k;
    while (i < len) {
        uint8_t code = in[i];
        if (code == 0 || i + code > len) return -1;
        for (k = 1; k < code; k++) { /* j < i + k: safe in place */
            uint8_t b = in[i + k];
            if (b == 0) return -1;
            out[j++] = b;
        }
        i += code;
        if (code < 0xFF && i < len) out[j++] = 0;
    }
    return (long)j;
}

/* A COBS writer fed one byte at a time, so a frame is encoded without a second buffer. */
typedef struct {
    uint8_t *out;
    size_t cap, o, code_at;
    uint8_t code, full, overflow;
} cobs_writer_t;

static void w_reserve(cobs_writer_t *w) {
    w->code_at = w->o;
    if (w->o < w->cap) w->o++; else w->overflow = 1;
    w->code = 1;
}

static void w_put(cobs_writer_t *w, uint8_t b) {
    if (w->full) { /* the previous block is complete and more data follows */
        w->full = 0;
        w_reserve(w);
    }
    if (w->overflow) return;
    if (b == 0) {
        w->out[w->code_at] = w->code;
        w_reserve(w);
        return;
    }
    if (w->o >= w->cap) { w->overflow = 1; return; }
    w->out[w->o++] = b;
    if (++w->code == 0xFF) {
        w->out[w->code_at] = w->code;
        w->full = 1;
    }
}

size_t ami_frame_encode(const ami_frame_t *f, uint8_t *out, size_t cap) {
    uint8_t header[AMI_HEADER_SIZE];
    uint16_t crc = 0xFFFFu;
    cobs_writer_t w;
    size_t i;
    if (cap < 3) return 0;
    header[0] = f->version; header[1] = f->flags; header[2] = f->seq; header[3] = f->type;
    header[4] = (uint8_t)(f->len & 0xFF); header[5] = (uint8_t)(f->len >> 8);
    for (i = 0; i < 4; i++) header[6 + i] = (uint8_t)(f->t_us >> (8 * i));
    out[0] = 0;
    w.out = out; w.cap = cap - 1; /* keep room for the closing delimiter */
    w.o = 1; w.full = 0; w.overflow = 0;
    w_reserve(&w);
    for (i = 0; i < AMI_HEADER_SIZE; i++) { crc = ami_crc16_update(crc, header[i]); w_put(&w, header[i]); }
    for (i = 0; i < f->len; i++) { crc = ami_crc16_update(crc, f->payload[i]); w_put(&w, f->payload[i]); }
    w_put(&w, (uint8_t)(crc & 0xFF));
    w_put(&w, (uint8_t)(crc >> 8));
    if (w.overflow) return 0;
    if (!w.full) w.out[w.code_at] = w.code;
    out[w.o++] = 0;
    return w.o;
}

/* ---------------------------------------------------------------------------------------- decoder */
void ami_decoder_init(ami_decoder_t *d, uint8_t *buf, size_t cap, uint16_t max_payload) {
    memset(d, 0, sizeof(*d));
    d->buf = buf;
    d->cap = cap;
    d->max_payload = max_payload;
}

int ami_decoder_push(ami_decoder_t *d, uint8_t byte, ami_frame_t *out) {
    long n;
    const uint8_t *b;
    uint16_t length;
    size_t body_len;
    if (byte != 0) {
        if (d->discarding) return 0;
        if (d->len >= d->cap) { /* longer than any frame: drop until the next delimiter */
            d->stats.oversize++;
            d->len = 0;
            d->discarding = 1;
            return 0;
        }
        d->buf[d->len++] = byte;
        return 0;
    }
    if (d->discarding) { d->discarding = 0; d->len = 0; return 0; }
    if (d->len == 0) return 0;
    n = ami_cobs_decode(d->buf, d->len, d->buf);
    d->len = 0;
    if (n < (long)(AMI_HEADER_SIZE + AMI_CRC_SIZE)) { d->stats.malformed++; return 0; }
    b = d->buf;
    body_len = (size_t)n - AMI_CRC_SIZE;
    if (ami_crc16(b, body_len) != (uint16_t)(b[body_len] | (b[body_len + 1] << 8))) {
        d->stats.crc_errors++;
        return 0;
    }
    length = (uint16_t)(b[4] | (b[5] << 8));
    if (b[0] != AMI_VERSION || length != body_len - AMI_HEADER_SIZE) { d->stats.malformed++; return 0; }
    if (length > d->max_payload) { d->stats.oversize++; return 0; }
    if (b[1] & AMI_MUST_UNDERSTAND_MASK & (uint8_t)~AMI_KNOWN_FLAGS) { d->stats.unknown_flags++; return 0; }
    if (d->have_seq) d->stats.seq_gaps += (uint8_t)(b[2] - d->expected_seq);
    d->expected_seq = (uint8_t)(b[2] + 1);
    d->have_seq = 1;
    d->stats.frames++;
    out->version = b[0]; out->flags = b[1]; out->seq = b[2]; out->type = b[3]; out->len = length;
    out->t_us = (uint32_t)b[6] | ((uint32_t)b[7] << 8) | ((uint32_t)b[8] << 16) | ((uint32_t)b[9] << 24);
    out->payload = b + AMI_HEADER_SIZE;
    return 1;
}

/* ------------------------------------------------------------------------------- message packing */
typedef struct { uint8_t *p; size_t cap, n; uint8_t overflow; } put_t;
typedef struct { const uint8_t *p; size_t n, pos; } get_t;

static void put8(put_t *w, uint8_t v) { if (w->n < w->cap) w->p[w->n++] = v; else w->overflow = 1; }
static void put16(put_t *w, uint16_t v) { put8(w, (uint8_t)v); put8(w, (uint8_t)(v >> 8)); }
static void put32(put_t *w, uint32_t v) { put16(w, (uint16_t)v); put16(w, (uint16_t)(v >> 16)); }
static void putf(put_t *w, float v) { uint32_t u; memcpy(&u, &v, 4); put32(w, u); }
static size_t done(const put_t *w) { return w->overflow ? 0 : w->n; }

/* Reads past the end return zero: older senders' shorter payloads zero-fill. */
static uint8_t get8(get_t *r) { uint8_t v = r->pos < r->n ? r->p[r->pos] : 0; r->pos++; return v; }
static uint16_t get16(get_t *r) { uint16_t lo = get8(r); return (uint16_t)(lo | ((uint16_t)get8(r) << 8)); }
static uint32_t get32(get_t *r) { uint32_t lo = get16(r); return lo | ((uint32_t)get16(r) << 16); }
static float getf(get_t *r) { uint32_t u = get32(r); float v; memcpy(&v, &u, 4); return v; }

#define PUT_INIT(out, cap) { out, cap, 0, 0 }
#define GET_INIT(p, n) { p, n, 0 }

size_t ami_hello_pack(const ami_hello_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    put8(&w, m->version); put32(&w, m->schema_hash); put16(&w, m->max_payload); put32(&w, m->capabilities);
    return done(&w);
}
void ami_hello_unpack(const uint8_t *p, size_t n, ami_hello_t *m) {
    get_t r = GET_INIT(p, n);
    m->version = get8(&r); m->schema_hash = get32(&r); m->max_payload = get16(&r); m->capabilities = get32(&r);
}

size_t ami_heartbeat_pack(const ami_heartbeat_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    put32(&w, m->uptime_ms); put8(&w, m->state); put32(&w, m->crc_errors); put32(&w, m->seq_gaps);
    return done(&w);
}
void ami_heartbeat_unpack(const uint8_t *p, size_t n, ami_heartbeat_t *m) {
    get_t r = GET_INIT(p, n);
    m->uptime_ms = get32(&r); m->state = get8(&r); m->crc_errors = get32(&r); m->seq_gaps = get32(&r);
}

size_t ami_ack_pack(const ami_ack_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    put8(&w, m->acked_seq); put8(&w, m->acked_type); put8(&w, m->status);
    return done(&w);
}
void ami_ack_unpack(const uint8_t *p, size_t n, ami_ack_t *m) {
    get_t r = GET_INIT(p, n);
    m->acked_seq = get8(&r); m->acked_type = get8(&r); m->status = get8(&r);
}

size_t ami_time_sync_pack(const ami_time_sync_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    put32(&w, m->origin_us); put32(&w, m->receive_us); put32(&w, m->transmit_us);
    return done(&w);
}
void ami_time_sync_unpack(const uint8_t *p, size_t n, ami_time_sync_t *m) {
    get_t r = GET_INIT(p, n);
    m->origin_us = get32(&r); m->receive_us = get32(&r); m->transmit_us = get32(&r);
}

size_t ami_surprise_pack(const ami_surprise_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    put32(&w, m->step); putf(&w, m->value); putf(&w, m->threshold); put8(&w, m->event);
    return done(&w);
}
void ami_surprise_unpack(const uint8_t *p, size_t n, ami_surprise_t *m) {
    get_t r = GET_INIT(p, n);
    m->step = get32(&r); m->value = getf(&r); m->threshold = getf(&r); m->event = get8(&r);
}

size_t ami_config_pack(const ami_config_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    put16(&w, m->key); put32(&w, (uint32_t)m->value);
    return done(&w);
}
void ami_config_unpack(const uint8_t *p, size_t n, ami_config_t *m) {
    get_t r = GET_INIT(p, n);
    m->key = get16(&r); m->value = (int32_t)get32(&r);
}

size_t ami_imu_pack(const ami_imu_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    int i;
    put32(&w, m->sample_us);
    for (i = 0; i < 3; i++) putf(&w, m->accel[i]);
    for (i = 0; i < 3; i++) putf(&w, m->gyro[i]);
    return done(&w);
}
void ami_imu_unpack(const uint8_t *p, size_t n, ami_imu_t *m) {
    get_t r = GET_INIT(p, n);
    int i;
    m->sample_us = get32(&r);
    for (i = 0; i < 3; i++) m->accel[i] = getf(&r);
    for (i = 0; i < 3; i++) m->gyro[i] = getf(&r);
}

size_t ami_command_pack(const ami_command_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    put16(&w, m->code); put32(&w, (uint32_t)m->arg);
    return done(&w);
}
void ami_command_unpack(const uint8_t *p, size_t n, ami_command_t *m) {
    get_t r = GET_INIT(p, n);
    m->code = get16(&r); m->arg = (int32_t)get32(&r);
}

size_t ami_vector_pack(const ami_vector_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    uint8_t i, dim = m->dim > AMI_MAX_VECTOR ? (uint8_t)AMI_MAX_VECTOR : m->dim;
    put8(&w, dim);
    for (i = 0; i < dim; i++) putf(&w, m->values[i]);
    return done(&w);
}
void ami_vector_unpack(const uint8_t *p, size_t n, ami_vector_t *m) {
    get_t r = GET_INIT(p, n);
    size_t avail = n > 1 ? (n - 1) / 4 : 0;
    uint8_t i, dim = get8(&r);
    if (dim > avail) dim = (uint8_t)avail; /* clipped to whole values present */
    if (dim > AMI_MAX_VECTOR) dim = AMI_MAX_VECTOR;
    m->dim = dim;
    for (i = 0; i < dim; i++) m->values[i] = getf(&r);
}

static size_t elem_size(uint8_t dtype) { return dtype == AMI_F16 ? 2u : dtype == AMI_I8 ? 1u : 4u; }

size_t ami_tensor_pack(const ami_tensor_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    size_t i, bytes = (size_t)m->dim * elem_size(m->dtype);
    put32(&w, m->step); put8(&w, m->dtype); put16(&w, m->dim); putf(&w, m->scale);
    for (i = 0; i < bytes; i++) put8(&w, m->data[i]);
    return done(&w);
}
void ami_tensor_unpack(const uint8_t *p, size_t n, ami_tensor_t *m) {
    get_t r = GET_INIT(p, n);
    size_t avail;
    m->step = get32(&r); m->dtype = get8(&r); m->dim = get16(&r); m->scale = getf(&r);
    avail = n > 11 ? (n - 11) / elem_size(m->dtype) : 0;
    if (m->dim > avail) m->dim = (uint16_t)avail;
    m->data = p + 11;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    float f;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FFu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

float ami_tensor_value(const ami_tensor_t *m, uint16_t i) {
    const uint8_t *e;
    uint32_t u;
    float f;
    if (i >= m->dim) return 0.0f;
    e = m->data + (size_t)i * elem_size(m->dtype);
    if (m->dtype == AMI_I8) return (float)(int8_t)e[0] * m->scale;
    if (m->dtype == AMI_F16) return half_to_float((uint16_t)(e[0] | (e[1] << 8)));
    u = (uint32_t)e[0] | ((uint32_t)e[1] << 8) | ((uint32_t)e[2] << 16) | ((uint32_t)e[3] << 24);
    memcpy(&f, &u, 4);
    return f;
}

size_t ami_log_pack(const ami_log_t *m, uint8_t *out, size_t cap) {
    put_t w = PUT_INIT(out, cap);
    size_t i;
    put8(&w, m->level);
    for (i = 0; i < m->text_len; i++) put8(&w, m->text[i]);
    return done(&w);
}
void ami_log_unpack(const uint8_t *p, size_t n, ami_log_t *m) {
    m->level = n ? p[0] : 0;
    m->text = n ? p + 1 : p;
    m->text_len = n ? n - 1 : 0;
}
