// Package tink backs Tink's remote-key interfaces with hsmkeys: an AEAD
// (tink.AEAD and tink.AEADWithContext) whose every Encrypt makes one
// envelope, a fresh AES-256 session key generated on the PKCS#11 token, the
// plaintext sealed under it by the token (AES-GCM, with the associated data
// bound) and the key wrapped under a KEK that never leaves the token; and a
// registry.KMSClient, so that Tink code names the KEK by a key URI,
//
//	hsmkeys://KEKNAME
//
// the way it names a cloud KMS key (aead.NewKMSEnvelopeAEAD2,
// aead.CreateKMSEnvelopeAEADKeyTemplate, keyset.Handle.Write).
//
// The ciphertext is the CMS message hsmkeys encrypt writes (docs/format.md,
// Adapters); associated data is its encryption context {"aad":
// base64(ad)}, so hsmkeys decrypt opens it with --context aad=BASE64, and
// openssl cms opens a ciphertext made without associated data.
//
// Tink's AEAD interface has no context and returns errors: each call runs
// under context.Background() (use the WithContext methods to bound them).
// AEADs and Clients are safe for concurrent use.
package tink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/hsmkeys/hsmkeys/integrations/internal/envelope"
	"github.com/hsmkeys/hsmkeys/provider"
	tinkapi "github.com/tink-crypto/tink-go/v2/tink"
)

// URIPrefix starts every key URI of this package.
const URIPrefix = "hsmkeys://"

// ErrKeyURI: a key URI this client does not serve, or that names no KEK.
var ErrKeyURI = errors.New("tink: unsupported hsmkeys key uri")

var (
	_ tinkapi.AEAD            = (*AEAD)(nil)
	_ tinkapi.AEADWithContext = (*AEAD)(nil)
)

// AEAD seals and opens with one KEK of the token, one envelope per call.
type AEAD struct{ e *envelope.Envelope }

// NewAEAD returns the AEAD of the KEK named kek on p (which stays the
// caller's). Its newest version seals; every version on the token opens.
func NewAEAD(ctx context.Context, p *provider.Provider, kek string) (*AEAD, error) {
	e, err := envelope.New(ctx, p, kek)
	if err != nil {
		return nil, fmt.Errorf("tink: %w", err)
	}
	return &AEAD{e: e}, nil
}

// Encrypt is EncryptWithContext under context.Background().
func (a *AEAD) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	return a.EncryptWithContext(context.Background(), plaintext, associatedData)
}

// Decrypt is DecryptWithContext under context.Background().
func (a *AEAD) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	return a.DecryptWithContext(context.Background(), ciphertext, associatedData)
}

// EncryptWithContext makes one envelope of plaintext bound to
// associatedData.
func (a *AEAD) EncryptWithContext(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	ct, err := a.e.Seal(ctx, plaintext, associatedData)
	if err != nil {
		return nil, fmt.Errorf("tink: %w", err)
	}
	return ct, nil
}

// DecryptWithContext opens an envelope for this KEK with the same
// associated data; anything else fails, with no plaintext.
func (a *AEAD) DecryptWithContext(ctx context.Context, ciphertext, associatedData []byte) ([]byte, error) {
	pt, err := a.e.Open(ctx, ciphertext, associatedData)
	if err != nil {
		return nil, fmt.Errorf("tink: %w", err)
	}
	return pt, nil
}

// Client is a registry.KMSClient for the key URIs under its prefix, with
// the KEKs of one token. Register it with registry.RegisterKMSClient.
type Client struct {
	prefix string
	p      *provider.Provider

	mu    sync.Mutex
	aeads map[string]*AEAD // by KEK name: the KEK is looked up once
}

// NewClient returns a client for the key URIs that start with uriPrefix
// (URIPrefix itself, or a longer prefix of it such as "hsmkeys://app-" to
// serve only some KEKs), on p, which stays the caller's.
func NewClient(uriPrefix string, p *provider.Provider) (*Client, error) {
	if uriPrefix == "" {
		uriPrefix = URIPrefix
	}
	if !strings.HasPrefix(strings.ToLower(uriPrefix), URIPrefix) {
		return nil, fmt.Errorf("%w: prefix %q does not start with %s", ErrKeyURI, uriPrefix, URIPrefix)
	}
	if p == nil {
		return nil, fmt.Errorf("tink: %w: nil provider", provider.ErrInvalidInput)
	}
	return &Client{prefix: uriPrefix, p: p, aeads: map[string]*AEAD{}}, nil
}

// Supported reports whether keyURI is under the client's prefix.
func (c *Client) Supported(keyURI string) bool {
	return len(keyURI) >= len(c.prefix) && strings.EqualFold(keyURI[:len(c.prefix)], c.prefix)
}

// GetAEAD returns the AEAD of the KEK that keyURI (hsmkeys://KEKNAME)
// names. The token is the client's: a key URI has no query.
func (c *Client) GetAEAD(keyURI string) (tinkapi.AEAD, error) {
	if !c.Supported(keyURI) {
		return nil, fmt.Errorf("%w: %q is not under %s", ErrKeyURI, keyURI, c.prefix)
	}
	name := keyURI[len(URIPrefix):]
	if name == "" || strings.ContainsAny(name, "?#") {
		return nil, fmt.Errorf("%w: %q (want %sKEKNAME, no query)", ErrKeyURI, keyURI, URIPrefix)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if a := c.aeads[name]; a != nil {
		return a, nil
	}
	a, err := NewAEAD(context.Background(), c.p, name)
	if err != nil {
		return nil, err
	}
	c.aeads[name] = a
	return a, nil
}
