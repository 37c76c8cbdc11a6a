// systemd integration for `modelreg serve` (examples/modelreg.service,
// examples/modelreg.socket): readiness notification (Type=notify) and
// sockets passed by socket activation (LISTEN_FDS).
#pragma once

#include <map>
#include <string>

namespace modelreg::doors {

/// Tells the service manager the node serves (READY=1) with a status line.
/// Does nothing when not started by one (no NOTIFY_SOCKET).
void notify_ready(const std::string& status);

/// Tells it the node is stopping (STOPPING=1).
void notify_stopping();

/// Sockets passed by socket activation, by name (FileDescriptorName= in the
/// .socket unit; an unnamed one is "unknown"), taken from the environment
/// (LISTEN_* variables are removed). Empty when there are none.
std::map<std::string, int> activated_sockets();

} // namespace modelreg::doors
