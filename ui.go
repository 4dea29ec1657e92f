package postscale

import (
	"bytes"
	"embed"
	"html"
	"net/http"
	"strings"
)

// uiFiles is the API keys page: one HTML file, its style sheet and its
// script, served as they are (no build step) by the operator route on the
// admin endpoint (/postscale/ui/) and by the postscale_portal handler.
//
//go:embed ui/index.html ui/app.css ui/app.js
var uiFiles embed.FS

// pageCSP lets the page load only its own files: no inline script or
// style, no framing, no forms or base URL pointing elsewhere.
const pageCSP = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

// setPageHeaders sets the security headers of every answer of the page
// and its API. Cache-Control no-store keeps answers that carry a key (or
// account data) out of every cache.
func setPageHeaders(h http.Header) {
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	// Same-origin requests keep their Referer, which Caddy's admin
	// endpoint checks in place of an Origin; nothing leaves the site.
	h.Set("Referrer-Policy", "same-origin")
}

// uiAssets maps the page's file names to their content types.
var uiAssets = map[string]string{
	"index.html": "text/html; charset=utf-8",
	"app.css":    "text/css; charset=utf-8",
	"app.js":     "text/javascript; charset=utf-8",
}

// pageSettings is what the served index.html tells the script, in data
// attributes of its <html> element: which API it calls, and the gateway
// URL for the example curl line.
type pageSettings struct {
	mode   string // "operator" or "customer"
	apiURL string // may be empty
}

// serveUIFile answers a GET or HEAD for one of the page's files ("" is
// index.html), or 404 for any other name.
func serveUIFile(w http.ResponseWriter, r *http.Request, name string, s pageSettings) {
	setPageHeaders(w.Header())
	if name == "" {
		name = "index.html"
	}
	ctype, ok := uiAssets[name]
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	b, err := uiFiles.ReadFile("ui/" + name)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if name == "index.html" {
		attrs := `data-mode="` + s.mode + `" data-api-url="` + html.EscapeString(s.apiURL) + `"`
		b = bytes.Replace(b, []byte(`data-mode="customer"`), []byte(attrs), 1)
	}
	w.Header().Set("Content-Type", ctype)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(b)
}

// uiFileName returns the page file a path names, from its last segment.
func uiFileName(path string) string {
	return path[strings.LastIndex(path, "/")+1:]
}
