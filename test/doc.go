// Package test is the integration test suite of the Postscale gateway: it
// runs a real Caddy in-process (caddytest) with the plugin, a recording
// backend behind it, and drives it the way clients and operators do —
// HTTP requests, the admin API under /postscale/, and the `caddy
// postscale` command — asserting the contract the README states (What the backend receives, Errors, Managing keys, the directive).
//
// caddytest runs one Caddy per test binary, on ports chosen free when the
// binary starts (see choosePorts), so no test here may call t.Parallel,
// but test runs in several checkouts may run at once. That Caddy logs to a
// file, not to stderr, and a failing test shows what it logged meanwhile
// (see TestMain); its config and data directories are temporary ones.
package test
