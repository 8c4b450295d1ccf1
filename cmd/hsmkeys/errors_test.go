package main

import (
	"fmt"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
)

// Wrong-kind input gets a hint naming what it is, not the doctor hint of
// ErrUnsupported (issue 12).
func TestHintsWrongKind(t *testing.T) {
	for kind, want := range map[string]string{
		"message": "it is an encrypted message: 'hsmkeys decrypt -i FILE' opens it",
		"key":     "it is an exported key: 'hsmkeys key inspect FILE' describes it, 'hsmkeys key rewrap' re-wraps it",
		"a cms signed-data message (content type 1.2.840.113549.1.7.2)": "hsmkeys reads the messages of 'hsmkeys encrypt' and the keys of 'hsmkeys key new' (CMS authEnvelopedData); 'openssl cms -cmsout -print -inform DER -in FILE' shows what this is",
	} {
		err := fmt.Errorf("decrypt: %w", &provider.KindError{Kind: kind})
		assert.Equal(t, []string{want}, hints(err), kind)
	}
}
