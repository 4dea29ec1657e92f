package test

import (
	"fmt"
	"os"
	"testing"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// testDir is the test binary's own temporary directory: Caddy's config
// and data directories (see testenv.IsolateCaddyDirs) and the gateway
// binary. It is removed when the tests are done.
var testDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	testDir, err = testenv.IsolateCaddyDirs()
	if err != nil {
		fmt.Fprintln(os.Stderr, "making the tests' Caddy directories:", err)
		return 2
	}
	defer os.RemoveAll(testDir)
	if err := choosePorts(); err != nil {
		fmt.Fprintln(os.Stderr, "choosing test ports:", err)
		return 2
	}
	return m.Run()
}
