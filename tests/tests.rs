//! One integration-test binary (ripgrep's layout): each module is an area, tested the way a
//! user meets it: through the `peerpost` binary, or through a real child process.

// `peerpost init/key/passwd/status` through the binary: files, permissions, phrases, errors.
mod cli;
// A child process writing to the store is SIGKILLed mid-way; nothing committed is lost.
mod crash;
// Decoders fed random and hostile bytes through the public API: typed errors, never panics.
mod formats;
// Many full nodes in one process: directory, objects, node loss, hostile peers.
mod overlay;
// Five `peerpost run` processes on loopback: status, lookup, clean stop.
mod overlay_procs;
mod util;
