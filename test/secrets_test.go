package test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// keyLogFilter is the log filter the README suggests for Caddy's admin
// log, which records every request's URI before any handler runs: it
// replaces whatever is shaped like a key in the uri field (its prefix and
// every character a key may hold after it, '/' included).
const keyLogFilter = `uri regexp "ps_(?:live|test)_[0-9A-Za-z._~+/%-]*" "ps_REDACTED"`

// logTo is a global option that writes Caddy's logs, debug and up, to
// path; with filter, through keyLogFilter.
func logTo(path string, filter bool) string {
	format := "format json"
	if filter {
		format = "format filter {\n\t\t\twrap json\n\t\t\t" + keyLogFilter + "\n\t\t}"
	}
	return fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\t%s\n\t\tlevel DEBUG\n\t}\n", path, format)
}

// startGatewayLogged is startGateway with Caddy's logs in a file, whose
// path it returns too.
func startGatewayLogged(t *testing.T, extra string, filter bool) (backend *recorder, store, logFile string) {
	t.Helper()
	backend = newRecorder(t, "mail")
	store = storePath(t)
	logFile = filepath.Join(t.TempDir(), "caddy.log")
	loadConfig(t, globalOptions(logTo(logFile, filter))+gatewaySite(store, backend.addr(), extra), "caddyfile")
	return backend, store, logFile
}

// readLog returns the lines of a log file.
func readLog(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// secretOf is the part of a key that nothing but the response creating it
// may show: all of it but the prefix and the characters its redacted form
// shows.
func secretOf(key string) string {
	body := key[len("ps_live_"):]
	return body[:len(body)-min(4, len(body)/4)]
}

// showsKey names the first of keys whose secret part s holds, or "".
func showsKey(s string, keys ...string) string {
	for _, k := range keys {
		if strings.Contains(s, secretOf(k)) {
			return k[:len("ps_live_")] + "…"
		}
	}
	return ""
}

// runCLIIn is runCLI with stdin.
func runCLIIn(stdin string, args ...string) (stdout, stderr string, err error) {
	c := &cobra.Command{Use: "postscale"}
	caddycmd.Commands()["postscale"].CobraFunc(c)
	var out, errOut bytes.Buffer
	c.SetArgs(args)
	c.SetIn(strings.NewReader(stdin))
	c.SetOut(&out)
	c.SetErr(&errOut)
	err = c.Execute()
	return out.String(), errOut.String(), err
}
