package postscale

import (
	"io"
	"net/http"
	"strings"
)

// bearerToken returns the token of the request's one Authorization header,
// or the outcome that rejects the request: outcomeMissing for no header or
// an empty one, outcomeWrongScheme for another scheme or a key without
// one, outcomeInvalid for a Bearer credential that is empty or
// malformed, outcomeMultipleAuth for several headers.
//
// The form is RFC 6750 §2.1: "Bearer" 1*SP b64token, the scheme name
// case-insensitive (RFC 9110 §11.1). Blanks around the whole value are
// not part of it (RFC 9110 §5.5). Anything else that starts with the word
// Bearer (a tab or a comma after it, say) is a Bearer credential written
// wrong: it is answered as a malformed key, never as a missing one, so the
// client learns that its key was seen.
func bearerToken(h http.Header) (string, outcome) {
	vals := h["Authorization"]
	switch len(vals) {
	case 0:
		return "", outcomeMissing
	case 1:
	default:
		return "", outcomeMultipleAuth
	}
	v := strings.Trim(vals[0], " \t")
	if v == "" {
		return "", outcomeMissing
	}
	const scheme = "Bearer"
	if len(v) < len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", outcomeWrongScheme
	}
	rest := v[len(scheme):]
	if rest != "" && isTokenChar(rest[0]) {
		return "", outcomeWrongScheme // a longer scheme name, e.g. "Bearerish"
	}
	token := strings.TrimLeft(rest, " ")
	if len(token) == len(rest) || token == "" || strings.ContainsAny(token, " \t") {
		// No space after the scheme (nothing, or a tab or other
		// separator), no token, or blanks inside it.
		return "", outcomeInvalid
	}
	return token, outcomeAdmitted
}

// isTokenChar reports whether c may appear in an HTTP token, such as an
// auth-scheme name (RFC 9110 §5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// credentialParams are the query parameter names that carry an API key,
// in the form credentialName compares them: sending a key in the URL is
// refused, since URLs are logged and cached everywhere.
var credentialParams = [...]string{"api_key", "apikey", "api_token", "access_token", "accesstoken", "auth_token", "key"}

// credentialsInQuery reports whether a raw query string carries an API
// key: a parameter named as one of credentialParams, or a ps_live_ or
// ps_test_ key under any name or none. It reads the query as the most
// lenient backend would, since what matters is whether a key was sent,
// not whether Go's parser would find it: both '&' and ';' separate
// parameters (url.ParseQuery rejects ';', older Python and Java split on
// it), and names are compared as credentialName says. It does not
// allocate.
func credentialsInQuery(rawQuery string) bool {
	for rawQuery != "" {
		var pair string
		if i := strings.IndexAny(rawQuery, "&;"); i >= 0 {
			pair, rawQuery = rawQuery[:i], rawQuery[i+1:]
		} else {
			pair, rawQuery = rawQuery, ""
		}
		name, value, _ := strings.Cut(pair, "=")
		if credentialName(name) || carriesKey(name) || carriesKey(value) {
			return true
		}
	}
	return false
}

// maxParamName bounds the names credentialName decodes: longer ones are
// no credential parameter in any spelling.
const maxParamName = 64

// credentialName reports whether a raw query parameter name is one of
// credentialParams as a backend would read it: percent-decoded (twice, for
// a value encoded once too often; invalid escapes kept as they are, as PHP
// does) with '+' as a space, case-insensitive, leading spaces dropped, '.',
// ' ' and '-' read as '_' (PHP turns "api.key" and "api key" into
// api_key), and array syntax taken off ("api_key[]", "api_key[0]": PHP,
// Rails and Node's qs read them as api_key). So api%5Fkey, API_KEY,
// api.key, access-token and access_token[] are all caught, while key_id,
// keys and monkey are not.
func credentialName(raw string) bool {
	if raw == "" || len(raw) > 3*maxParamName {
		return false
	}
	var bufs [2][3 * maxParamName]byte
	name := append(bufs[0][:0], raw...)
	for i := range 2 {
		if !containsEscape(name) {
			break
		}
		name = percentDecode(bufs[1-i][:0], name) // never longer
	}
	for len(name) > 0 && name[0] == ' ' {
		name = name[1:]
	}
	if i := indexByte(name, 0); i >= 0 {
		name = name[:i] // C-string backends stop at a NUL
	}
	if i := indexByte(name, '['); i >= 0 {
		if indexByte(name[i:], ']') >= 0 {
			name = name[:i] // array syntax
		} else {
			name[i] = '_' // PHP reads an unclosed '[' as '_'
		}
	}
	if len(name) > maxParamName {
		return false
	}
	for i, c := range name {
		switch {
		case c == '.' || c == ' ' || c == '-':
			name[i] = '_'
		case 'A' <= c && c <= 'Z':
			name[i] = c + ('a' - 'A')
		}
	}
	for _, p := range credentialParams {
		if string(name) == p {
			return true
		}
	}
	return false
}

// containsEscape reports whether s has a '%' or '+' to decode.
func containsEscape(s []byte) bool {
	for _, c := range s {
		if c == '%' || c == '+' {
			return true
		}
	}
	return false
}

func indexByte(s []byte, c byte) int {
	for i := range s {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// percentDecode appends src to dst with its valid %XX escapes decoded and
// '+' read as a space; an invalid escape is kept as it is.
func percentDecode(dst, src []byte) []byte {
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '+':
			c = ' '
		case c == '%' && i+2 < len(src) && isHex(src[i+1]) && isHex(src[i+2]):
			c = unhex(src[i+1])<<4 | unhex(src[i+2])
			i += 2
		}
		dst = append(dst, c)
	}
	return dst
}

// carriesKey reports whether a raw query name or value, percent-decoded,
// contains the start of a key: "ps_live_" or "ps_test_". Whatever it is
// called, a key in a URL ends up in logs.
func carriesKey(s string) bool {
	if strings.IndexByte(s, '%') < 0 {
		return strings.Contains(s, "ps_live_") || strings.Contains(s, "ps_test_")
	}
	// Decode on the fly, comparing the last 8 bytes seen.
	var w [8]byte
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			c = unhex(s[i+1])<<4 | unhex(s[i+2])
			i += 2
		}
		copy(w[:], w[1:])
		w[7] = c
		if n++; n >= len(w) && (string(w[:]) == "ps_live_" || string(w[:]) == "ps_test_") {
			return true
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// dropClientHeaders removes every Postscale-* header the client sent, so a
// client can never choose its own mode, account, key or plan. The
// Postscale_* and Postscale.* spellings go too, because CGI-style backends
// read them as the same variable as Postscale-*. (Caddy already drops
// header names with '_' or '.' unless told to keep them.)
func dropClientHeaders(h http.Header) {
	for name := range h {
		if isPostscaleName(name) {
			delete(h, name)
		}
	}
}

// isPostscaleName reports whether a field name is Postscale-* in any case,
// or Postscale_* or Postscale.*.
func isPostscaleName(name string) bool {
	// The first letter alone rules out nearly every header a request has.
	if len(name) <= len("Postscale-") || name[0]|0x20 != 'p' || !strings.EqualFold(name[:len("Postscale")], "Postscale") {
		return false
	}
	c := name[len("Postscale")]
	return c == '-' || c == '_' || c == '.'
}

// dropClientTrailers keeps the Postscale-* fields (in every spelling
// dropClientHeaders removes) that a client sends as trailers, after the
// body, from reaching the next handlers and the backend.
//
// net/http fills r.Trailer only once the body has been read to its end:
// for HTTP/1.1 it first holds the names the Trailer header declared and
// then gets every trailer the client sent, declared or not; for HTTP/2 it
// gets the values of the declared names. Caddy's reverse_proxy declares
// the names in r.Trailer to the backend up front and sends the values it
// finds there when its read of the body ends. So the declared names are
// removed now, and the body is wrapped so that the trailers are filtered
// again the moment its end is read, before anyone downstream can see
// them. Requests without trailers pay nothing. (HTTP/3 requests' trailers
// never reach r.Trailer.)
//
// The Trailer header itself is left in r.Header only by HTTP/1.1 requests
// that are not chunked, and so can carry no trailers; the Postscale names
// are taken out of it all the same, for the handlers that read it.
func dropClientTrailers(r *http.Request) {
	if vals, ok := r.Header["Trailer"]; ok {
		dropPostscaleNames(r.Header, vals)
	}
	if r.Trailer == nil {
		// For HTTP/1.1, trailers that nobody declared go into a new map
		// on net/http's own request, which no handler sees.
		return
	}
	dropClientHeaders(r.Trailer)
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &trailerFilter{ReadCloser: r.Body, trailer: r.Trailer}
	}
}

// dropPostscaleNames rewrites the Trailer header without the Postscale
// names in its lists, and deletes it when none are left. It allocates
// only when there is a name to take out.
func dropPostscaleNames(h http.Header, vals []string) {
	found := false
	for _, v := range vals {
		for name := range strings.SplitSeq(v, ",") {
			if isPostscaleName(strings.Trim(name, " \t")) {
				found = true
			}
		}
	}
	if !found {
		return
	}
	var kept []string
	for _, v := range vals {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.Trim(name, " \t"); name != "" && !isPostscaleName(name) {
				kept = append(kept, name)
			}
		}
	}
	if len(kept) == 0 {
		delete(h, "Trailer")
		return
	}
	h["Trailer"] = []string{strings.Join(kept, ", ")}
}

// trailerFilter is a request body that removes the client's Postscale
// trailers from the request's trailer map as soon as a read of the body
// ends, which is when net/http fills that map in.
type trailerFilter struct {
	io.ReadCloser
	trailer http.Header
}

func (b *trailerFilter) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		dropClientHeaders(b.trailer)
	}
	return n, err
}
