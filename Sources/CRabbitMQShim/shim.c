#include "CRabbitMQShim.h"

amqp_rpc_reply_t rw_login_plain(amqp_connection_state_t state, const char *vhost,
                                int channel_max, int frame_max, int heartbeat,
                                const amqp_table_t *client_properties,
                                const char *user, const char *password) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat,
                                      client_properties, AMQP_SASL_METHOD_PLAIN,
                                      user, password);
}

amqp_rpc_reply_t rw_login_external(amqp_connection_state_t state, const char *vhost,
                                   int channel_max, int frame_max, int heartbeat,
                                   const amqp_table_t *client_properties,
                                   const char *identity) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat,
                                      client_properties, AMQP_SASL_METHOD_EXTERNAL,
                                      identity);
}

// MARK: batched publishing

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

enum { RW_FRAME_OVERHEAD = 8 };  // type, channel, size; frame-end octet
enum { RW_SLICE_BYTES = 1 << 20 };

typedef struct {
    uint8_t *bytes;
    size_t len, cap;
} rw_buffer_t;

static int rw_reserve(rw_buffer_t *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    uint8_t *p = realloc(b->bytes, cap);
    if (!p) return AMQP_STATUS_NO_MEMORY;
    b->bytes = p;
    b->cap = cap;
    return 0;
}

static void rw_put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void rw_put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void rw_put64(uint8_t *p, uint64_t v) { rw_put32(p, v >> 32); rw_put32(p + 4, (uint32_t)v); }

/// Starts a frame at the end of `b` (its size is filled in by rw_end_frame).
static size_t rw_begin_frame(rw_buffer_t *b, uint8_t type, amqp_channel_t channel) {
    size_t start = b->len;
    b->bytes[start] = type;
    rw_put16(b->bytes + start + 1, channel);
    b->len += 7;
    return start;
}

static void rw_end_frame(rw_buffer_t *b, size_t start) {
    rw_put32(b->bytes + start + 3, (uint32_t)(b->len - start - 7));
    b->bytes[b->len++] = AMQP_FRAME_END;
}

/// Appends an encoder's output (method arguments or properties) of at most `limit` bytes (what
/// is left of one frame), retrying with more room: librabbitmq's encoders fail with a negative
/// status when out of room, and also on invalid data (a short string over 255 bytes), which is
/// why the room stops growing at the frame's limit. A method or header that does not fit one
/// frame is refused here, as amqp_basic_publish would refuse it, rather than sent for the
/// broker to close the connection over.
static int rw_append_encoded(rw_buffer_t *b, int (*encode)(void *, void *, amqp_bytes_t), void *what, void *decoded,
                             size_t limit) {
    size_t room = limit < 256 ? limit : 256;
    for (;;) {
        int r = rw_reserve(b, room + 1);
        if (r) return r;
        amqp_bytes_t out = { room, b->bytes + b->len };
        int n = encode(what, decoded, out);
        if (n >= 0) {
            b->len += (size_t)n;
            return 0;
        }
        if (room >= limit) return n;
        room = room * 4 < limit ? room * 4 : limit;
    }
}

static int rw_encode_method(void *method, void *decoded, amqp_bytes_t out) {
    return amqp_encode_method(*(amqp_method_number_t *)method, decoded, out);
}

static int rw_encode_properties(void *class_id, void *decoded, amqp_bytes_t out) {
    return amqp_encode_properties(*(uint16_t *)class_id, decoded, out);
}

static int rw_send_all(int fd, const uint8_t *p, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            // librabbitmq's sockets are non-blocking: wait for room, as its own send does.
            struct pollfd pfd = { fd, POLLOUT, 0 };
            if (poll(&pfd, 1, -1) < 0 && errno != EINTR) return AMQP_STATUS_SOCKET_ERROR;
        } else {
            return AMQP_STATUS_SOCKET_ERROR;
        }
    }
    return AMQP_STATUS_OK;
}

int rw_check_batch(amqp_connection_state_t state, const rw_publish_t *messages, size_t count) {
    int frame_max = amqp_get_frame_max(state);
    if (frame_max < 4096) return AMQP_STATUS_SOCKET_ERROR;
    size_t body_room = (size_t)frame_max - RW_FRAME_OVERHEAD;
    rw_buffer_t b = { 0 };
    int r = 0;
    for (size_t i = 0; i < count && r == 0; i++) {
        const rw_publish_t *m = &messages[i];
        b.len = 0;
        amqp_basic_publish_t publish = { 0, m->exchange, m->routing_key, 0, 0 };
        amqp_method_number_t method = AMQP_BASIC_PUBLISH_METHOD;
        if ((r = rw_append_encoded(&b, rw_encode_method, &method, &publish, body_room - 4))) break;
        uint16_t class_id = AMQP_BASIC_CLASS;
        r = rw_append_encoded(&b, rw_encode_properties, &class_id, (void *)&m->properties, body_room - 12);
    }
    free(b.bytes);
    return r;
}

int rw_publish_batch(amqp_connection_state_t state, amqp_channel_t channel,
                     const rw_publish_t *messages, size_t count) {
    amqp_socket_t *socket = amqp_get_socket(state);
    int fd = socket ? amqp_socket_get_sockfd(socket) : -1;
    int frame_max = amqp_get_frame_max(state);
    if (fd < 0 || frame_max < 4096) return AMQP_STATUS_SOCKET_ERROR;  // 4 096: AMQP's minimum frame_max
    size_t body_room = (size_t)frame_max - RW_FRAME_OVERHEAD;

    rw_buffer_t b = { 0 };
    // Every method and header is encoded once before anything is sent: one that cannot be
    // refuses the whole batch with the connection intact, although the frames go out in
    // slices below.
    int r = rw_check_batch(state, messages, count);
    for (size_t i = 0; i < count && r == 0; i++) {
        const rw_publish_t *m = &messages[i];
        // Sent in slices of about RW_SLICE_BYTES: a batch of large events is not held whole
        // a second time (small events still go out in one write per slice).
        if (b.len >= RW_SLICE_BYTES) {
            if ((r = rw_send_all(fd, b.bytes, b.len))) break;
            b.len = 0;
        }
        if ((r = rw_reserve(&b, 7 + 4))) break;
        // basic.publish: method id, then its arguments.
        size_t start = rw_begin_frame(&b, AMQP_FRAME_METHOD, channel);
        rw_put32(b.bytes + b.len, AMQP_BASIC_PUBLISH_METHOD);
        b.len += 4;
        amqp_basic_publish_t publish = { 0, m->exchange, m->routing_key, 0, 0 };
        amqp_method_number_t method = AMQP_BASIC_PUBLISH_METHOD;
        if ((r = rw_append_encoded(&b, rw_encode_method, &method, &publish, body_room - 4))) break;
        rw_end_frame(&b, start);
        // Content header: class, weight, body size, then the properties.
        if ((r = rw_reserve(&b, 7 + 12))) break;
        start = rw_begin_frame(&b, AMQP_FRAME_HEADER, channel);
        rw_put16(b.bytes + b.len, AMQP_BASIC_CLASS);
        rw_put16(b.bytes + b.len + 2, 0);
        rw_put64(b.bytes + b.len + 4, m->body.len);
        b.len += 12;
        uint16_t class_id = AMQP_BASIC_CLASS;
        if ((r = rw_append_encoded(&b, rw_encode_properties, &class_id, (void *)&m->properties, body_room - 12))) break;
        rw_end_frame(&b, start);
        // Body frames.
        for (size_t offset = 0; offset < m->body.len;) {
            size_t part = m->body.len - offset < body_room ? m->body.len - offset : body_room;
            if ((r = rw_reserve(&b, part + RW_FRAME_OVERHEAD))) break;
            start = rw_begin_frame(&b, AMQP_FRAME_BODY, channel);
            memcpy(b.bytes + b.len, (const uint8_t *)m->body.bytes + offset, part);
            b.len += part;
            rw_end_frame(&b, start);
            offset += part;
        }
    }
    if (r == 0 && b.len > 0) r = rw_send_all(fd, b.bytes, b.len);
    free(b.bytes);
    return r;
}
