package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
)

// KeyManifest is what an exported key says of itself: the content of the
// CMS message that carries it, encrypted under the key (docs/format.md).
// It is authentic once read: InspectKey reads it on the token, after the
// key unwrapped and the manifest's GCM tag checked.
type KeyManifest struct {
	// Version is the manifest's version: 2 (names its own type, written
	// since the id-data form of exported keys) or 1 (older exports).
	Version int
	// Algorithm is the key's algorithm.
	Algorithm Algorithm
	// KCV is the key's 3-byte check value (the first bytes of an AES
	// encryption of zeros under the key), which Import compares.
	KCV []byte
	// Created is when the key was generated, in UTC to the second.
	Created time.Time
	// Policy is the export policy the key was made under.
	Policy ExportPolicy
	// KeyID is the key's random identifier (Key.ID).
	KeyID [16]byte
}

func publicManifest(m *cms.Manifest) *KeyManifest {
	if m == nil {
		return nil
	}
	alg, _ := ParseAlgorithm(m.KeyAlg)
	km := &KeyManifest{Version: m.Version, Algorithm: alg, KCV: append([]byte(nil), m.KCV...), Created: m.Created, Policy: ExportTrusted}
	if m.Policy == cms.PolicyNone {
		km.Policy = ExportNone
	}
	copy(km.KeyID[:], m.KeyID)
	return km
}

// InspectKey is Inspect for an exported key, with its manifest: the key is
// imported into the token (as Import does, with o.Context), its manifest
// read and authenticated there, and the key destroyed. Input that is not an
// exported key is ErrWrongKind (a *KindError); use Inspect for messages.
func (p *Provider) InspectKey(ctx context.Context, blob []byte, o Options) (*Info, error) {
	m, err := parseBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	format := "der"
	if cms.IsArmored(blob) {
		format = "pem"
	}
	info, err := inspectMessage(m, format)
	if err != nil {
		return nil, err
	}
	if info.Kind != "key" {
		return nil, fmt.Errorf("inspect: %w", &KindError{Kind: info.Kind, Want: "key"})
	}
	k, err := p.importMessage(ctx, m, o)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	defer k.Destroy(context.WithoutCancel(ctx))
	info.Manifest = publicManifest(k.manifest)
	return info, nil
}
