// Command runinfo reads a Caddy JSON config on stdin and prints one line
// saying where it serves the gateway, where its admin endpoint is and which
// key store it opens. ./xcaddy.sh run prints that line before it starts
// Caddy, from `caddy adapt` of the config it is about to run:
//
//	postscale on :8080; other sites on 127.0.0.1:8091, 127.0.0.1:8092; admin on 127.0.0.1:2019; store /root/.local/share/caddy/postscale/keys.db
//
// It never prints a password from a PostgreSQL DSN.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

func main() {
	dataDir := flag.String("datadir", "", "Caddy's data directory (caddy environ: caddy.AppDataDir), where the default store lives")
	flag.Parse()
	config, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "runinfo:", err)
		os.Exit(1)
	}
	line, err := describe(config, *dataDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "runinfo:", err)
		os.Exit(1)
	}
	fmt.Println(line)
}

// config is the part of a Caddy JSON config the line is made of.
type config struct {
	Admin *struct {
		Disabled bool   `json:"disabled"`
		Listen   string `json:"listen"`
	} `json:"admin"`
	Apps struct {
		HTTP struct {
			Servers map[string]struct {
				Listen []string        `json:"listen"`
				Routes json.RawMessage `json:"routes"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}

// describe makes the line for the JSON config. dataDir is Caddy's data
// directory; empty, the default store is named by where it would be.
func describe(raw []byte, dataDir string) (string, error) {
	var cfg config
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", err
	}
	var gateway, others, stores []string
	names := make([]string, 0, len(cfg.Apps.HTTP.Servers))
	for name := range cfg.Apps.HTTP.Servers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		srv := cfg.Apps.HTTP.Servers[name]
		var routes any
		if len(srv.Routes) > 0 {
			if err := json.Unmarshal(srv.Routes, &routes); err != nil {
				return "", fmt.Errorf("server %s: %w", name, err)
			}
		}
		handlers := postscaleHandlers(routes)
		if len(handlers) == 0 {
			others = append(others, srv.Listen...)
			continue
		}
		gateway = append(gateway, srv.Listen...)
		for _, h := range handlers {
			stores = appendNew(stores, storeOf(h, dataDir))
		}
	}

	var parts []string
	if len(gateway) == 0 {
		parts = append(parts, "no postscale handler in this config")
	} else {
		parts = append(parts, "postscale on "+strings.Join(gateway, ", "))
	}
	if len(others) > 0 {
		parts = append(parts, "other sites on "+strings.Join(others, ", "))
	}
	switch {
	case cfg.Admin != nil && cfg.Admin.Disabled:
		parts = append(parts, "admin off")
	case cfg.Admin != nil && cfg.Admin.Listen != "":
		parts = append(parts, "admin on "+cfg.Admin.Listen)
	default:
		parts = append(parts, "admin on localhost:2019")
	}
	if len(stores) == 1 {
		parts = append(parts, "store "+stores[0])
	} else if len(stores) > 1 {
		parts = append(parts, "stores "+strings.Join(stores, ", "))
	}
	return strings.Join(parts, "; "), nil
}

// postscaleHandlers finds every postscale handler anywhere under v
// (subroutes included).
func postscaleHandlers(v any) []map[string]any {
	var found []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "postscale" {
			found = append(found, v)
		}
		for _, child := range v {
			found = append(found, postscaleHandlers(child)...)
		}
	case []any:
		for _, child := range v {
			found = append(found, postscaleHandlers(child)...)
		}
	}
	return found
}

// storeOf names the store a postscale handler opens: the SQLite file, or
// the PostgreSQL database without its password.
func storeOf(handler map[string]any, dataDir string) string {
	store, _ := handler["store"].(map[string]any)
	backend, _ := store["backend"].(string)
	switch backend {
	case "", "sqlite":
		path, _ := store["path"].(string)
		if path == "" {
			if dataDir == "" {
				return "<Caddy data dir>/postscale/keys.db"
			}
			return filepath.Join(dataDir, "postscale", "keys.db")
		}
		if abs, err := filepath.Abs(path); err == nil {
			return abs
		}
		return path
	case "postgres":
		dsn, _ := store["dsn"].(string)
		return "postgres " + withoutPassword(dsn)
	default:
		return backend
	}
}

// keywordPassword matches password=… in a keyword/value DSN, quoted or not.
var keywordPassword = regexp.MustCompile(`(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)\s*`)

// withoutPassword returns dsn with any password left out. A placeholder
// such as {env.POSTSCALE_POSTGRES_DSN} is shown as it is: its value is
// read when the store starts.
func withoutPassword(dsn string) string {
	if strings.HasPrefix(dsn, "{") && strings.HasSuffix(dsn, "}") {
		return dsn
	}
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if u.User != nil {
			u.User = url.User(u.User.Username())
		}
		q := u.Query()
		for k := range q {
			if strings.EqualFold(k, "password") {
				q.Del(k)
			}
		}
		u.RawQuery = q.Encode()
		return u.String()
	}
	if strings.Contains(dsn, "://") {
		return "(a DSN that does not parse as a URL; not shown)"
	}
	return strings.TrimSpace(keywordPassword.ReplaceAllString(dsn, ""))
}

func appendNew(list []string, s string) []string {
	for _, have := range list {
		if have == s {
			return list
		}
	}
	return append(list, s)
}
