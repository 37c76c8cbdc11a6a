#include "modelreg/actors/connect_uri.hpp"

#include <cstdlib>
#include <memory>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <caf/io/middleman.hpp>

#include "modelreg/messages/error.hpp"

namespace modelreg {

std::string default_socket_path() {
  if (const char* s = std::getenv("MODELREG_SOCKET"); s != nullptr && *s != '\0')
    return s;
  if (const char* d = std::getenv("XDG_RUNTIME_DIR"); d != nullptr && *d != '\0')
    return std::string{d} + "/modelreg/modelreg.sock";
  return "/tmp/modelreg-" + std::to_string(::getuid()) + "/modelreg.sock";
}

caf::expected<node_address> parse_connect_uri(const std::string& uri) {
  node_address t;
  if (uri.rfind("unix:", 0) == 0) {
    t.path = uri.substr(5);
    if (t.path.rfind("//", 0) == 0)
      t.path = t.path.substr(2);
    if (t.path.empty())
      return make_error(errc::invalid_argument, "'" + uri + "': no socket path");
    return t;
  }
  if (uri.rfind("tcp://", 0) == 0) {
    auto a = parse_host_port(uri.substr(6));
    if (!a || a->port == 0)
      return make_error(errc::invalid_argument,
                        "'" + uri + "': expected tcp://HOST:PORT with PORT from 1 to 65535");
    return a;
  }
  return make_error(errc::invalid_argument,
                    "'" + uri + "': expected unix:PATH or tcp://HOST:PORT");
}

caf::expected<node_address> parse_host_port(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return make_error(errc::invalid_argument, "expected HOST:PORT, not '" + text + "'");
  node_address a;
  a.unix_socket = false;
  a.host = text.substr(0, colon);
  if (a.host.size() > 2 && a.host.front() == '[' && a.host.back() == ']')
    a.host = a.host.substr(1, a.host.size() - 2);
  auto port_text = text.substr(colon + 1);
  char* end = nullptr;
  auto port = std::strtoul(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end != '\0' || port > 65535)
    return make_error(errc::invalid_argument,
                      "expected HOST:PORT with PORT from 0 to 65535, not '" + text + "'");
  a.port = static_cast<uint16_t>(port);
  return a;
}

bool is_loopback(const std::string& host) {
  if (host == "localhost")
    return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

std::string check_tls(const tls_files& tls) {
  if (tls.cert.empty() || tls.key.empty() || tls.ca.empty())
    return "TLS needs a certificate, its key and a CA file (mutual TLS)";
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx{SSL_CTX_new(TLS_method()), SSL_CTX_free};
  auto why = [](const std::string& what) {
    char buf[256];
    ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
    return what + " (" + buf + ")";
  };
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert.c_str()) != 1)
    return why("cannot load certificate " + tls.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
      return why("private key " + tls.key + " does not match " + tls.cert);
    return why("cannot load private key " + tls.key);
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    return why("private key " + tls.key + " does not match " + tls.cert);
  if (SSL_CTX_load_verify_locations(ctx.get(), tls.ca.c_str(), nullptr) != 1)
    return why("cannot load CA file " + tls.ca);
  return {};
}

void configure_for_connect(caf::actor_system_config& cfg, const std::string& uri,
                           const tls_files& tls) {
  if (uri.rfind("tcp://", 0) != 0)
    return;
  cfg.load<caf::io::middleman>();
  if (tls.any())
    load_tls(cfg, tls);
}

} // namespace modelreg
