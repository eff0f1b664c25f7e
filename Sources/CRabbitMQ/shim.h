#ifndef RUNWORKER_CRABBITMQ_SHIM_H
#define RUNWORKER_CRABBITMQ_SHIM_H
// librabbitmq 0.11 (Debian librabbitmq-dev): core API, framing, TCP and TLS sockets.
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#endif
