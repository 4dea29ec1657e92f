package postscale

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
)

// Mode says whether a key sends real email (live) or never delivers (test).
// It is part of the key itself: ps_live_… or ps_test_….
type Mode uint8

// The two modes. The zero Mode is invalid.
const (
	ModeLive Mode = iota + 1
	ModeTest
)

// String returns "live" or "test" ("" for the zero Mode).
func (m Mode) String() string {
	switch m {
	case ModeLive:
		return "live"
	case ModeTest:
		return "test"
	}
	return ""
}

// ParseMode parses "live" or "test".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "live":
		return ModeLive, nil
	case "test":
		return ModeTest, nil
	}
	return 0, fmt.Errorf("mode must be \"live\" or \"test\", not %q", s)
}

const (
	base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

	// randomLen is the number of random base62 characters in an issued key.
	randomLen = 32
	// checksumLen is the number of base62 characters of the CRC-32 checksum.
	checksumLen = 6
	// bodyLen is the length of an issued key's body, after "ps_<mode>_".
	bodyLen = randomLen + checksumLen
	// maxLegacyBodyLen bounds what is accepted as a legacy key body, so a
	// huge header never reaches the hash or the store.
	maxLegacyBodyLen = 128
)

// Key is a parsed API key: its mode and the SHA-256 of the whole key, which
// is all the gateway ever keeps of it.
type Key struct {
	Mode Mode
	Hash [sha256.Size]byte
	// Legacy is true when the key does not carry a valid checksum; such a
	// key can only match an imported legacy record.
	Legacy bool
}

// Errors of ParseKey. Neither ever contains the key.
var (
	errMalformedKey = errors.New("malformed API key")
	errBadChecksum  = errors.New("API key checksum does not match")
)

// ParseKey checks the form of s and, for the shape of an issued key
// (^ps_(live|test)_[0-9A-Za-z]{38}$), its checksum, without any store or
// cache lookup. With allowLegacy true, any other ps_live_/ps_test_ key
// whose body is 1–128 characters of [0-9A-Za-z._~+/-] parses too, marked
// Legacy.
func ParseKey(s string, allowLegacy bool) (Key, error) {
	var k Key
	var body string
	switch {
	case strings.HasPrefix(s, "ps_live_"):
		k.Mode, body = ModeLive, s[len("ps_live_"):]
	case strings.HasPrefix(s, "ps_test_"):
		k.Mode, body = ModeTest, s[len("ps_test_"):]
	default:
		return Key{}, errMalformedKey
	}
	if len(body) > maxLegacyBodyLen {
		return Key{}, errMalformedKey
	}
	// One copy onto the stack serves the checksum and the hash, so parsing
	// allocates nothing.
	var buf [len("ps_live_") + maxLegacyBodyLen]byte
	b := buf[:copy(buf[:], s)]
	if len(body) == bodyLen && isBase62(body) {
		// The shape of an issued key: its checksum decides, legacy or not.
		if !checksumOK(b) {
			return Key{}, errBadChecksum
		}
		k.Hash = sha256.Sum256(b)
		return k, nil
	}
	if !allowLegacy {
		return Key{}, errMalformedKey
	}
	if len(body) == 0 || !isLegacyBody(body) {
		return Key{}, errMalformedKey
	}
	k.Legacy = true
	k.Hash = sha256.Sum256(b)
	return k, nil
}

// HashKey returns the SHA-256 of a full key, as the store keeps it.
func HashKey(key string) [sha256.Size]byte { return sha256.Sum256([]byte(key)) }

// hashEqual compares two key hashes in constant time.
func hashEqual(a, b *[sha256.Size]byte) bool {
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// checksumOK reports whether the last 6 characters of an issued key are the
// base62 CRC-32 of everything before them.
func checksumOK(key []byte) bool {
	n := len(key) - checksumLen
	var want [checksumLen]byte
	encodeChecksum(&want, crcIEEE(key[:n]))
	return subtle.ConstantTimeCompare(want[:], key[n:]) == 1
}

// crcIEEE is crc32.ChecksumIEEE written out, slicing by 8 bytes: the
// library's assembly makes its argument escape to the heap, and these 40
// bytes are checked on every request.
func crcIEEE(p []byte) uint32 {
	t := &crcTables
	crc := ^uint32(0)
	for ; len(p) >= 8; p = p[8:] {
		crc ^= uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24
		crc = t[0][p[7]] ^ t[1][p[6]] ^ t[2][p[5]] ^ t[3][p[4]] ^
			t[4][crc>>24] ^ t[5][crc>>16&0xff] ^ t[6][crc>>8&0xff] ^ t[7][crc&0xff]
	}
	for _, b := range p {
		crc = t[0][byte(crc)^b] ^ crc>>8
	}
	return ^crc
}

// crcTables[k][b] is the CRC-32 (IEEE) state of byte b followed by k zero
// bytes, which lets crcIEEE take 8 bytes per step.
var crcTables = func() (t [8][256]uint32) {
	t[0] = *crc32.IEEETable
	for b := range 256 {
		c := t[0][b]
		for k := 1; k < 8; k++ {
			c = t[0][c&0xff] ^ c>>8
			t[k][b] = c
		}
	}
	return t
}()

// encodeChecksum writes c in base62, most significant digit first, padded
// with '0' to 6 characters (62^6 > 2^32, so it always fits).
func encodeChecksum(dst *[checksumLen]byte, c uint32) {
	v := uint64(c)
	for i := checksumLen - 1; i >= 0; i-- {
		dst[i] = base62[v%62]
		v /= 62
	}
}

func isBase62(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') {
			return false
		}
	}
	return true
}

// isLegacyBody accepts the characters of an RFC 6750 b64token except '='.
func isLegacyBody(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// NewKey issues a key of the given mode: 32 random base62 characters from
// crypto/rand followed by the 6-character checksum.
func NewKey(mode Mode) (string, error) {
	if mode.String() == "" {
		return "", fmt.Errorf("invalid mode %d", mode)
	}
	prefix := "ps_" + mode.String() + "_"
	random, err := randomBase62(randomLen)
	if err != nil {
		return "", err
	}
	key := prefix + random
	var sum [checksumLen]byte
	encodeChecksum(&sum, crc32.ChecksumIEEE([]byte(key)))
	return key + string(sum[:]), nil
}

// randomBase62 returns n uniformly random base62 characters, using
// rejection sampling so that no character is more likely than another.
func randomBase62(n int) (string, error) {
	out := make([]byte, 0, n)
	var buf [64]byte
	for len(out) < n {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", fmt.Errorf("reading random bytes: %w", err)
		}
		for _, b := range buf {
			if b >= 248 { // 248 = 4*62: keep the distribution uniform
				continue
			}
			out = append(out, base62[b%62])
			if len(out) == n {
				break
			}
		}
	}
	return string(out), nil
}

// newID returns a public identifier such as key_3fX… (not a secret).
func newID(prefix string) (string, error) {
	r, err := randomBase62(20)
	if err != nil {
		return "", err
	}
	return prefix + r, nil
}

// Redact returns the display form of a key: its prefix and the last 4
// characters, e.g. ps_live_…wxyz. It is safe to show, log and store. A
// short (legacy) key shows fewer: never more than a quarter of what
// follows the prefix, so ps_live_abc123xyz (9 characters) shows
// ps_live_…yz and a key of 3 characters or fewer after the prefix shows
// ps_live_… alone. Characters that no key holds are never shown.
func Redact(key string) string {
	var prefix string
	switch {
	case strings.HasPrefix(key, "ps_live_"):
		prefix = "ps_live_"
	case strings.HasPrefix(key, "ps_test_"):
		prefix = "ps_test_"
	default:
		return "…" // not a Postscale key: show nothing of it
	}
	tail := key[len(key)-min(redactShown, (len(key)-len(prefix))/4):]
	if !isLegacyBody(tail) {
		tail = "" // not key characters (a mangled paste): show none of it
	}
	return prefix + "…" + tail
}

// redactShown is how many trailing characters Redact shows of a key long
// enough for them to be at most a quarter of it.
const redactShown = 4

// ParseHashHex parses a SHA-256 written as 64 hex digits.
func ParseHashHex(s string) ([sha256.Size]byte, error) {
	var h [sha256.Size]byte
	if len(s) != 2*sha256.Size {
		return h, fmt.Errorf("hash must be 64 hex digits")
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("hash must be 64 hex digits: %w", err)
	}
	return h, nil
}
