package postscale

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"regexp"
	"strings"
	"testing"
)

var issuedKeyPattern = regexp.MustCompile(`^ps_(live|test)_[0-9A-Za-z]{38}$`)

// checksumOf computes the README, Keys checksum independently of the code under
// test: CRC-32 (IEEE) in base62, most significant digit first, 6 digits.
func checksumOf(prefixAndRandom string) string {
	c := crc32.ChecksumIEEE([]byte(prefixAndRandom))
	digits := []byte("000000")
	for i := 5; c > 0; i-- {
		digits[i] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[c%62]
		c /= 62
	}
	return string(digits)
}

func TestNewKeyFormatAndChecksum(t *testing.T) {
	for _, mode := range []Mode{ModeLive, ModeTest} {
		seen := map[string]bool{}
		for range 200 {
			key, err := NewKey(mode)
			if err != nil {
				t.Fatal(err)
			}
			if !issuedKeyPattern.MatchString(key) {
				t.Fatalf("NewKey(%s) = %q, does not match %s", mode, key, issuedKeyPattern)
			}
			if !strings.HasPrefix(key, "ps_"+mode.String()+"_") {
				t.Fatalf("NewKey(%s) = %q, wrong prefix", mode, key)
			}
			if got, want := key[40:], checksumOf(key[:40]); got != want {
				t.Fatalf("checksum of %q: got %s, want %s", key, got, want)
			}
			if seen[key] {
				t.Fatalf("NewKey repeated a key: %q", key)
			}
			seen[key] = true
			k, err := ParseKey(key, false)
			if err != nil {
				t.Fatalf("ParseKey(NewKey()) failed: %v", err)
			}
			if k.Mode != mode || k.Legacy || k.Hash != sha256.Sum256([]byte(key)) {
				t.Fatalf("ParseKey(%q) = %+v", key, k)
			}
		}
	}
}

func TestCRCMatchesTheLibrary(t *testing.T) {
	buf := make([]byte, 200)
	for i := range buf {
		buf[i] = byte(i*131 + 7)
	}
	for n := range len(buf) {
		if got, want := crcIEEE(buf[:n]), crc32.ChecksumIEEE(buf[:n]); got != want {
			t.Fatalf("crcIEEE of %d bytes: got %08x, want %08x", n, got, want)
		}
	}
}

func TestChecksumPadding(t *testing.T) {
	// A zero checksum must come out as six '0' digits, the largest CRC-32
	// fits in six base62 digits.
	var got [checksumLen]byte
	encodeChecksum(&got, 0)
	if string(got[:]) != "000000" {
		t.Errorf("checksum of 0: got %q, want 000000", got)
	}
	encodeChecksum(&got, 61)
	if string(got[:]) != "00000z" {
		t.Errorf("checksum of 61: got %q, want 00000z", got)
	}
	encodeChecksum(&got, 0xFFFFFFFF)
	if string(got[:]) != "4gfFC3" { // 4294967295 in base62
		t.Errorf("checksum of 2^32-1: got %q, want 4gfFC3", got)
	}
}

func TestParseKey(t *testing.T) {
	good, _ := NewKey(ModeLive)
	// Flip the last checksum character to another base62 digit.
	last := good[len(good)-1]
	flipped := byte('0')
	if last == '0' {
		flipped = '1'
	}
	badSum := good[:len(good)-1] + string(flipped)
	// Change a random character: the checksum no longer matches.
	other := byte('a')
	if good[10] == 'a' {
		other = 'b'
	}
	badBody := good[:10] + string(other) + good[11:]

	tests := []struct {
		name      string
		key       string
		legacy    bool
		wantErr   error
		wantMode  Mode
		wantLegcy bool
	}{
		{name: "issued live key", key: good, wantMode: ModeLive},
		{name: "bad checksum", key: badSum, wantErr: errBadChecksum},
		{name: "changed body", key: badBody, wantErr: errBadChecksum},
		{name: "bad checksum with legacy on", key: badSum, legacy: true, wantErr: errBadChecksum},
		{name: "empty", key: "", wantErr: errMalformedKey},
		{name: "prefix only", key: "ps_live_", wantErr: errMalformedKey},
		{name: "prefix only, legacy on", key: "ps_live_", legacy: true, wantErr: errMalformedKey},
		{name: "unknown mode", key: "ps_prod_" + good[8:], wantErr: errMalformedKey},
		{name: "uppercase prefix", key: "PS_LIVE_" + good[8:], wantErr: errMalformedKey},
		{name: "legacy key, legacy off", key: "ps_live_abc123xyz", wantErr: errMalformedKey},
		{name: "legacy key, legacy on", key: "ps_live_abc123xyz", legacy: true, wantMode: ModeLive, wantLegcy: true},
		{name: "legacy test key", key: "ps_test_abc123xyz", legacy: true, wantMode: ModeTest, wantLegcy: true},
		{name: "legacy key with space", key: "ps_live_abc 123", legacy: true, wantErr: errMalformedKey},
		{name: "legacy key too long", key: "ps_live_" + strings.Repeat("a", 129), legacy: true, wantErr: errMalformedKey},
		{name: "legacy key at the length limit", key: "ps_live_" + strings.Repeat("a", 128), legacy: true, wantMode: ModeLive, wantLegcy: true},
		{name: "non-ASCII", key: "ps_live_ключ", legacy: true, wantErr: errMalformedKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseKey(tt.key, tt.legacy)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseKey error: got %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if k.Mode != tt.wantMode || k.Legacy != tt.wantLegcy {
				t.Errorf("got mode %s legacy %v, want mode %s legacy %v", k.Mode, k.Legacy, tt.wantMode, tt.wantLegcy)
			}
			if k.Hash != sha256.Sum256([]byte(tt.key)) {
				t.Errorf("hash is not SHA-256 of the key")
			}
		})
	}
}

func TestParseKeyErrorsNeverContainKey(t *testing.T) {
	good, _ := NewKey(ModeTest)
	for _, key := range []string{good[:45] + "!", "ps_live_" + good[8:44] + "zz", "ps_live_secretsecret"} {
		_, err := ParseKey(key, false)
		if err == nil {
			t.Fatalf("ParseKey(%q) accepted a bad key", key)
		}
		if strings.Contains(err.Error(), key[8:]) {
			t.Errorf("error %q contains the key", err)
		}
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ key, want string }{
		{"ps_live_abcdefghijklmnopqrstuvwxyz0123456789AB", "ps_live_…89AB"},
		{"ps_test_abc123xyz", "ps_test_…yz"}, // 9 characters: a quarter is 2
		{"ps_live_abcdefghij", "ps_live_…ij"},
		{"ps_live_abcdefghijklmnop", "ps_live_…mnop"},
		{"ps_live_abcdefg", "ps_live_…g"},
		{"ps_live_abc", "ps_live_…"},
		{"ps_live_", "ps_live_…"},
		{"ps_live_abcdefgh€€€", "ps_live_…"}, // no key characters: none shown
		{"sk_other_secret_value", "…"},
	}
	for _, tt := range tests {
		if got := Redact(tt.key); got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
	// Whatever its length, a key shows at most 4 characters of what
	// follows its prefix, and at most a quarter of them.
	for n := 0; n <= maxLegacyBodyLen; n++ {
		key := "ps_live_" + strings.Repeat("x", n)
		shown := len(strings.TrimPrefix(Redact(key), "ps_live_…"))
		if shown > 4 || 4*shown > n {
			t.Errorf("Redact of a key with %d characters after the prefix shows %d of them", n, shown)
		}
	}
}

func TestParseHashHex(t *testing.T) {
	want := sha256.Sum256([]byte("ps_live_abc123xyz"))
	for _, s := range []string{hex.EncodeToString(want[:]), strings.ToUpper(hex.EncodeToString(want[:]))} {
		got, err := ParseHashHex(s)
		if err != nil || got != want {
			t.Errorf("ParseHashHex(%q) = %x, %v; want %x", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "zz", strings.Repeat("g", 64), strings.Repeat("a", 63)} {
		if _, err := ParseHashHex(bad); err == nil {
			t.Errorf("ParseHashHex(%q) accepted", bad)
		}
	}
}

// FuzzParseKey checks that no input crashes the parser, that whatever it
// accepts without legacy keys is an issued key with a valid checksum, and
// that the hash is always SHA-256 of the input.
func FuzzParseKey(f *testing.F) {
	good, _ := NewKey(ModeLive)
	for _, s := range []string{good, "ps_live_abc123xyz", "", "ps_test_", "Bearer x", good[:45] + "A", "ps_live_" + strings.Repeat("z", 200)} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, legacy bool) {
		k, err := ParseKey(s, legacy)
		if err != nil {
			return
		}
		if k.Hash != sha256.Sum256([]byte(s)) {
			t.Fatalf("hash mismatch for %q", s)
		}
		if !k.Legacy {
			if !issuedKeyPattern.MatchString(s) || s[40:] != checksumOf(s[:40]) {
				t.Fatalf("accepted %q as an issued key", s)
			}
		}
		if k.Legacy && !legacy {
			t.Fatalf("legacy key %q accepted with legacy off", s)
		}
	})
}
