// One peer's failed TLS handshake must not close every other TLS connection.
//
// OpenSSL keeps its error queue per thread, and SSL_get_error() reports
// SSL_ERROR_SSL whenever that queue is not empty, whatever the call it is
// asked about did. Its manual says to empty the queue before every TLS I/O
// call. CAF 0.17.6's OpenSSL module does not (caf/openssl/session.cpp drains
// it only inside a log statement that release builds compile out). All of a
// node's TLS connections share the middleman's one network thread, so the
// errors of one refused handshake (a certificate of another CA, plain TCP
// sent to the TLS port) stayed queued, and the next read that found no data
// on *any* other connection was taken for a TLS failure: the node dropped
// every connected client and cluster member each time a stranger knocked
// (tests: serve_test.TcpWithMutualTlsAcceptsOnlyCertificatesOfItsCa, and the
// intruder in tests/cluster).
//
// The four TLS calls CAF makes are defined here and empty the calling
// thread's queue before they call OpenSSL's own. A definition in the program
// comes before libssl's in the dynamic linker's search order, so CAF's calls
// land here; other OpenSSL users in the process (gRPC) get the same, which
// is what OpenSSL asks of them anyway. The object is linked in through
// `load_tls()`, which every place that loads CAF's OpenSSL module calls.
#include "modelreg/actors/connect_uri.hpp"

#include <cstdio>
#include <cstdlib>

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <caf/openssl/manager.hpp>

namespace {

template <class Fn>
Fn next_definition(const char* name) {
  auto* fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
  if (fn == nullptr) {
    std::fprintf(stderr, "modelreg: OpenSSL's %s not found: %s\n", name, dlerror());
    std::abort();
  }
  return fn;
}

} // namespace

extern "C" {

int SSL_read(SSL* ssl, void* buf, int num) {
  static const auto real = next_definition<int (*)(SSL*, void*, int)>("SSL_read");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_write(SSL* ssl, const void* buf, int num) {
  static const auto real = next_definition<int (*)(SSL*, const void*, int)>("SSL_write");
  ERR_clear_error();
  return real(ssl, buf, num);
}

int SSL_accept(SSL* ssl) {
  static const auto real = next_definition<int (*)(SSL*)>("SSL_accept");
  ERR_clear_error();
  return real(ssl);
}

int SSL_connect(SSL* ssl) {
  static const auto real = next_definition<int (*)(SSL*)>("SSL_connect");
  ERR_clear_error();
  return real(ssl);
}

} // extern "C"

namespace modelreg {

void load_tls(caf::actor_system_config& cfg, const tls_files& tls) {
  cfg.load<caf::openssl::manager>();
  cfg.openssl_certificate = tls.cert;
  cfg.openssl_key = tls.key;
  cfg.openssl_cafile = tls.ca;
}

} // namespace modelreg
