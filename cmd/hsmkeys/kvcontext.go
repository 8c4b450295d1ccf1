package main

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on an encryption context given on the command line: far beyond any
// sensible use, small enough that a typo cannot make a huge header.
const (
	maxContextPairs = 64
	maxContextLen   = 1024 // of one key or one value, in bytes
)

// parseContextPair reads one --context argument, "key=value". The key is
// everything before the first '=', so values may hold '='. Keys are
// non-empty; both are UTF-8 without control characters (they are shown by
// key inspect, and must survive a terminal).
func parseContextPair(s string) (key, value string, err error) {
	key, value, ok := strings.Cut(s, "=")
	switch {
	case !ok:
		return "", "", fmt.Errorf("context %q: want key=value", s)
	case key == "":
		return "", "", fmt.Errorf("context %q: empty key", s)
	case len(key) > maxContextLen || len(value) > maxContextLen:
		return "", "", fmt.Errorf("context entry longer than %d bytes", maxContextLen)
	}
	for _, part := range []string{key, value} {
		if err := printable(part); err != nil {
			return "", "", fmt.Errorf("context %q: %w", s, err)
		}
	}
	return key, value, nil
}

func printable(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return errors.New("control character")
		}
	}
	return nil
}

// addContextPair adds one "key=value" to m; a key given twice is an error,
// not a silent overwrite.
func addContextPair(m map[string]string, s string) error {
	k, v, err := parseContextPair(s)
	if err != nil {
		return err
	}
	if _, dup := m[k]; dup {
		return fmt.Errorf("context key %q given twice", k)
	}
	if len(m) >= maxContextPairs {
		return fmt.Errorf("more than %d context entries", maxContextPairs)
	}
	m[k] = v
	return nil
}
