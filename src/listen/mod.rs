//! Listening sockets: inherited from systemd (`activation`), bound by the daemon
//! (`standalone`), or one connection on stdin/stdout (`inetd`).
