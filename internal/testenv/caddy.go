package testenv

import (
	"context"
	"os"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// UserEnv is the environment the test binary started with, before
// IsolateCaddyDirs changed it. Commands that should see the user's own
// settings get it, such as the go command, which reads `go env -w`
// settings from the user's config directory.
var UserEnv = os.Environ()

// IsolateCaddyDirs makes a temporary directory for one test binary and
// points Caddy's config and data directories into it, for this process and
// every process it starts: so a test run never overwrites the user's
// autosave.json (Caddy saves every config it loads there) and never
// touches the user's Caddy data directory (storage locks, instance.uuid,
// certificates, and the gateway's default SQLite store). It returns the
// directory; the caller removes it when the tests are done.
//
// Setting XDG_CONFIG_HOME and XDG_DATA_HOME alone is not enough:
// caddy.ConfigAutosavePath and caddy.DefaultStorage are computed from the
// environment when the caddy package is initialised, before TestMain runs,
// so they are computed again here (as `caddy run --envfile` does).
func IsolateCaddyDirs() (string, error) {
	dir, err := os.MkdirTemp("", "postscale-test-")
	if err != nil {
		return "", err
	}
	for name, sub := range map[string]string{"XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data"} {
		if err := os.Setenv(name, filepath.Join(dir, sub)); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	return dir, nil
}

// LoadCaddy loads a config into the in-process Caddy the way `caddy run`
// does: Caddy's log lines from before the config's own logging is set up
// go to that logging too, not to stderr.
func LoadCaddy(cfg []byte) error {
	_, orig, _ := caddy.BufferedLog()
	defer caddy.UnbufferDefaultLogger(orig)
	return caddy.Load(cfg, true)
}

// QuietRedis drops the Redis client's own log lines. It prints one to
// stderr for every failed connection, which the fault-injection tests
// cause on purpose; the tests check what the gateway does instead.
func QuietRedis() {
	redis.SetLogger(quietRedis{})
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
