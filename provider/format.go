package provider

// Exported keys: a CMS AuthEnvelopedData whose content-encryption key is the
// session key itself, wrapped for each KEK, and whose content is a manifest
// encrypted under the key on the token. docs/format.md is the reference.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
)

// ErrMalformed: the input is not a well-formed CMS message of ours:
// truncated, bad DER, trailing data.
var ErrMalformed = errors.New("malformed cms message")

// ErrContext: the encryption context given does not match the one the
// message was made with.
var ErrContext = errors.New("encryption context does not match")

// MaxBlobSize bounds an exported key (a few recipients, a small manifest).
const MaxBlobSize = 1 << 20

// Options are the optional parts of Export, Import, Encrypt and Decrypt.
type Options struct {
	// Context is an encryption context: key/value pairs bound to the message
	// as authenticated attributes (in the spirit of a cloud KMS encryption
	// context). Decryption and import must be given the same context.
	Context map[string]string
	// Armor makes Export, Rewrap and Encrypt write PEM ("-----BEGIN CMS-----")
	// instead of DER.
	Armor bool
}

// mapCMS gives cms errors the provider's sentinels.
func mapCMS(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cms.ErrUnsupported):
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	case errors.Is(err, cms.ErrMalformed):
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return err
}

func gcmOID(alg Algorithm) asn1.ObjectIdentifier {
	if alg == AES128 {
		return cms.OIDAES128GCM
	}
	return cms.OIDAES256GCM
}

func algFromOID(oid asn1.ObjectIdentifier) (Algorithm, error) {
	switch {
	case oid.Equal(cms.OIDAES128GCM):
		return AES128, nil
	case oid.Equal(cms.OIDAES256GCM):
		return AES256, nil
	}
	return 0, fmt.Errorf("%w: content encryption algorithm %v", ErrUnsupported, oid)
}

// authAttrs builds the authenticated attributes: content type, and the
// encryption context when there is one.
func authAttrs(contentType cms.Attribute, ectx map[string]string, force bool) ([]cms.Attribute, error) {
	if len(ectx) == 0 && !force {
		return nil, nil
	}
	attrs := []cms.Attribute{contentType}
	if len(ectx) > 0 {
		a, err := cms.EncryptionContextAttr(ectx)
		if err != nil {
			return nil, fmt.Errorf("%w: encryption context: %w", ErrInvalidInput, err)
		}
		attrs = append(attrs, a)
	}
	return attrs, nil
}

// checkContext compares the context in h with the one the caller gave.
func checkContext(h *cms.Header, want map[string]string) error {
	got, err := h.EncryptionContext()
	if err != nil {
		return mapCMS(err)
	}
	if !maps.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		return fmt.Errorf("%w: the message was made with %d context entries (%s), %d were given",
			ErrContext, len(got), strings.Join(sortedKeys(got), ", "), len(want))
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// recipientFor wraps the key object under kek and describes the result as a
// CMS recipient.
func (p *Provider) recipientFor(s *p11.Session, obj p11.Object, alg Algorithm, kek *KEK) (cms.Recipient, error) {
	w, err := p.wrapOn(s, obj, alg, kek)
	if err != nil {
		return nil, err
	}
	switch w.Mechanism {
	case AESKeyWrap:
		oid := cms.OIDAES256Wrap
		if kek.Bits == 128 {
			oid = cms.OIDAES128Wrap
		}
		return &cms.KEKRecipient{KeyID: bytes.Clone(kek.ID), WrapAlg: oid, EncryptedKey: w.Bytes}, nil
	case RSAOAEPSHA1, RSAOAEPSHA256:
		h := crypto.SHA1
		if w.Mechanism == RSAOAEPSHA256 {
			h = crypto.SHA256
		}
		return &cms.KeyTransRecipient{SubjectKeyID: cms.SubjectKeyID(kek.PublicKey()), Hash: h, EncryptedKey: w.Bytes}, nil
	}
	return nil, fmt.Errorf("%w: wrap mechanism %v", ErrUnsupported, w.Mechanism)
}

func checkKEKs(to []*KEK) error {
	if len(to) == 0 {
		return fmt.Errorf("%w: no kek to wrap for", ErrInvalidInput)
	}
	if len(to) > 64 {
		return fmt.Errorf("%w: %d keks; at most 64", ErrInvalidInput, len(to))
	}
	for _, k := range to {
		if k == nil {
			return fmt.Errorf("%w: nil kek", ErrInvalidInput)
		}
		if err := k.usable(); err != nil {
			return err
		}
	}
	return nil
}

// Export wraps the session key k for every KEK in to and returns it as a CMS
// AuthEnvelopedData (DER, or PEM with o.Armor) whose content is the key's
// manifest, encrypted under k on the token. The key never leaves the token
// unwrapped; the token itself refuses unless k is exportable and each KEK
// is trusted.
func (p *Provider) Export(ctx context.Context, k *Key, to []*KEK, o Options) ([]byte, error) {
	if err := checkKEKs(to); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if k != nil && !k.exportable {
		return nil, fmt.Errorf("export: %w: %v was generated under export policy none", ErrPolicy, k)
	}
	var der []byte
	err := k.use(ctx, "export", func(s *p11.Session) error {
		kcv, err := p.keyCheckValue(s, k)
		if err != nil {
			return err
		}
		manifest, err := cms.MarshalManifest(&cms.Manifest{
			Version: cms.ManifestVersion, KeyAlg: k.alg.String(), KeyBits: k.alg.bytes() * 8,
			KCV: kcv, Created: k.created, Policy: cms.PolicyTrusted, KeyID: k.id[:],
		})
		if err != nil {
			return err
		}
		h := &cms.Header{ContentType: cms.OIDKeyManifest, Algorithm: gcmOID(k.alg), Nonce: make([]byte, p11.NonceSize)}
		if h.AuthAttrs, err = authAttrs(cms.ContentTypeAttr(cms.OIDKeyManifest), o.Context, true); err != nil {
			return err
		}
		for _, kek := range to {
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return err
			}
			h.Recipients = append(h.Recipients, r)
		}
		if _, err := rand.Read(h.Nonce); err != nil {
			return err
		}
		if k.seals.Add(1) > p.cfg.MaxSealsPerKey {
			return ErrKeyExhausted
		}
		sealed, err := p.pool.SealGCM(s, k.obj, h.Nonce, h.AAD(), manifest)
		if err != nil {
			return err
		}
		body, mac := sealed[:len(sealed)-p11.TagSize], sealed[len(sealed)-p11.TagSize:]
		der, err = cms.Marshal(h, body, mac)
		return err
	})
	if err != nil {
		return nil, mapCMS(err)
	}
	if o.Armor {
		return cms.Armor(der), nil
	}
	return der, nil
}

// parseBlob accepts DER or PEM.
func parseBlob(blob []byte) (*cms.Message, error) {
	if len(blob) == 0 {
		return nil, fmt.Errorf("%w: empty input", ErrMalformed)
	}
	if len(blob) > MaxBlobSize {
		return nil, fmt.Errorf("%w: %d bytes is larger than an exported key can be", ErrMalformed, len(blob))
	}
	if cms.IsArmored(blob) {
		der, ok := cms.Unarmor(blob)
		if !ok {
			return nil, fmt.Errorf("%w: bad pem armour", ErrMalformed)
		}
		blob = der
	}
	m, err := cms.Parse(bytes.NewReader(blob), int64(len(blob)))
	return m, mapCMS(err)
}

// unwrapRecipient unwraps the content-encryption key of h under the first
// recipient whose KEK this token holds. None gives ErrNotFound naming the
// identifiers in the message.
func (p *Provider) unwrapRecipient(ctx context.Context, h *cms.Header, alg Algorithm) (*Key, *KEK, error) {
	var ids []string
	for _, r := range h.Recipients {
		var (
			kek *KEK
			err error
			w   = &WrappedKey{Algorithm: alg}
		)
		switch r := r.(type) {
		case *cms.KEKRecipient:
			ids = append(ids, "kek id "+hex.EncodeToString(r.KeyID))
			switch {
			case r.WrapAlg.Equal(cms.OIDAES128Wrap), r.WrapAlg.Equal(cms.OIDAES192Wrap), r.WrapAlg.Equal(cms.OIDAES256Wrap):
				w.Mechanism = AESKeyWrap
			default:
				w.Mechanism = AESKeyWrapPad
			}
			w.KEKID, w.Bytes = r.KeyID, r.EncryptedKey
			kek, err = p.KEKByID(ctx, r.KeyID)
		case *cms.KeyTransRecipient:
			ids = append(ids, "subject key id "+hex.EncodeToString(r.SubjectKeyID))
			w.Mechanism = RSAOAEPSHA1
			if r.Hash == crypto.SHA256 {
				w.Mechanism = RSAOAEPSHA256
			}
			w.Bytes = r.EncryptedKey
			kek, err = p.kekBySKI(ctx, r.SubjectKeyID)
			if kek != nil {
				w.KEKID = kek.ID
			}
		default:
			continue
		}
		if errors.Is(err, ErrNotFound) || (err == nil && !kek.CanUnwrap()) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if err := validWrapped(w); err != nil {
			return nil, nil, err
		}
		k, err := p.unwrapUnder(ctx, w, kek)
		return k, kek, err
	}
	return nil, nil, fmt.Errorf("%w: no kek on token %q for any recipient (%s)", ErrNotFound, p.token.Label, strings.Join(ids, ", "))
}

// kekBySKI finds the RSA KEK whose subject key identifier is ski.
func (p *Provider) kekBySKI(ctx context.Context, ski []byte) (*KEK, error) {
	if k := p.keks.get(append([]byte("ski:"), ski...)); k != nil {
		return k, nil
	}
	k, err := p.KEKByPublicKey(ctx, func(pub *rsa.PublicKey) bool {
		return bytes.Equal(cms.SubjectKeyID(pub), ski)
	})
	if err != nil {
		return nil, err
	}
	p.keks.putAs(append([]byte("ski:"), ski...), k)
	return k, nil
}

// Import brings an exported key back into the token as a session key. It
// checks, in order: the CMS structure, that it is an exported key, the
// encryption context, the recipient (the KEK is found by the identifier in
// the blob), the unwrap, the manifest's GCM tag under the unwrapped key, and
// the manifest against the key (algorithm, length, check value). A blob
// edited anywhere, or a wrapped key spliced in from another blob, fails.
func (p *Provider) Import(ctx context.Context, blob []byte, o Options) (*Key, error) {
	m, err := parseBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	k, err := p.importMessage(ctx, m, o)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return k, nil
}

func (p *Provider) importMessage(ctx context.Context, m *cms.Message, o Options) (*Key, error) {
	h := m.Header
	if !h.ContentType.Equal(cms.OIDKeyManifest) {
		return nil, fmt.Errorf("%w: not an exported key (content type %v); use Decrypt for messages", ErrUnsupported, h.ContentType)
	}
	if err := checkContext(h, o.Context); err != nil {
		return nil, err
	}
	alg, err := algFromOID(h.Algorithm)
	if err != nil {
		return nil, err
	}
	if m.ContentLen > 4096 {
		return nil, fmt.Errorf("%w: a manifest of %d bytes", ErrMalformed, m.ContentLen)
	}
	body := make([]byte, m.ContentLen, m.ContentLen+int64(len(m.MAC)))
	if _, err := io.ReadFull(m.Content(), body); err != nil {
		return nil, mapCMS(err)
	}
	k, _, err := p.unwrapRecipient(ctx, h, alg)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = k.Destroy(context.WithoutCancel(ctx))
		}
	}()
	var manifest *cms.Manifest
	err = k.use(ctx, "manifest", func(s *p11.Session) error {
		pt, err := p.pool.OpenGCM(s, k.obj, h.Nonce, h.AAD(), append(body, m.MAC...))
		if err != nil {
			if isAuthFailure(err) {
				return fmt.Errorf("%w: the manifest does not authenticate under the unwrapped key (edited blob or spliced key): %w", ErrAuthentication, err)
			}
			return err
		}
		if manifest, err = cms.ParseManifest(pt); err != nil {
			return mapCMS(err)
		}
		if manifest.KeyAlg != alg.String() || manifest.KeyBits != alg.bytes()*8 {
			return fmt.Errorf("%w: manifest says %s/%d, the message %v", ErrWrappedKeyInvalid, manifest.KeyAlg, manifest.KeyBits, alg)
		}
		kcv, err := p.pool.KCV(s, k.obj)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(kcv, manifest.KCV) != 1 {
			return fmt.Errorf("%w: key check value differs from the manifest", ErrWrappedKeyInvalid)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	copy(k.id[:], manifest.KeyID)
	k.created = manifest.Created
	ok = true
	return k, nil
}

// Rewrap replaces the recipients of an exported key with wrappings under
// the KEKs in to (another KEK, or a new version of the same one), inside the
// token: the key is unwrapped there, wrapped again, and destroyed. The
// manifest, its nonce and tag are kept as they were, so the blob still
// names the same key. Armour follows the input.
func (p *Provider) Rewrap(ctx context.Context, blob []byte, to []*KEK, o Options) ([]byte, error) {
	if err := checkKEKs(to); err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	m, err := parseBlob(blob)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	k, err := p.importMessage(ctx, m, o)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", err)
	}
	defer k.Destroy(context.WithoutCancel(ctx))
	h := *m.Header
	h.Recipients = nil
	err = k.use(ctx, "wrap", func(s *p11.Session) error {
		for _, kek := range to {
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return err
			}
			h.Recipients = append(h.Recipients, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	body := make([]byte, m.ContentLen)
	if _, err := io.ReadFull(m.Content(), body); err != nil {
		return nil, mapCMS(err)
	}
	der, err := cms.Marshal(&h, body, m.MAC)
	if err != nil {
		return nil, fmt.Errorf("rewrap: %w", mapCMS(err))
	}
	if cms.IsArmored(blob) || o.Armor {
		return cms.Armor(der), nil
	}
	return der, nil
}

// Recipient describes one recipient of a message or exported key.
type Recipient struct {
	Kind         string // "kek" (KEKRecipientInfo), "ktri" (KeyTransRecipientInfo) or "other" (not usable by hsmkeys)
	KEKID        []byte // kek: the KEK's CKA_ID
	SubjectKeyID []byte // ktri: the RSA key's subject key identifier
	Algorithm    string // key wrap or transport algorithm
	KEKVersion   int    // kek: version from an hsmkeys KEK ID, else 0
}

// Info is what Inspect tells about a blob or message without a token.
type Info struct {
	Kind       string // "key" for an exported key, "message" for an encrypted message
	Format     string // "der" or "pem"
	Algorithm  Algorithm
	Recipients []Recipient
	Context    map[string]string
	ContentLen int64
	Manifest   *cms.Manifest // nil: encrypted under the key, readable only with it
}

// Inspect parses an exported key or a message and reports its recipients
// and algorithms. It needs no token and checks no tag: nothing it reports is
// authenticated until Import or Decrypt succeeds.
func Inspect(blob []byte) (*Info, error) {
	format := "der"
	if cms.IsArmored(blob) {
		format = "pem"
		der, ok := cms.Unarmor(blob)
		if !ok {
			return nil, fmt.Errorf("inspect: %w: bad pem armour", ErrMalformed)
		}
		blob = der
	}
	m, err := cms.Parse(bytes.NewReader(blob), int64(len(blob)))
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", mapCMS(err))
	}
	return inspectMessage(m, format)
}

func inspectMessage(m *cms.Message, format string) (*Info, error) {
	h := m.Header
	alg, err := algFromOID(h.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	info := &Info{Kind: "message", Format: format, Algorithm: alg, ContentLen: m.ContentLen}
	if h.ContentType.Equal(cms.OIDKeyManifest) {
		info.Kind = "key"
	}
	if info.Context, err = h.EncryptionContext(); err != nil {
		return nil, fmt.Errorf("inspect: %w", mapCMS(err))
	}
	for _, r := range h.Recipients {
		switch r := r.(type) {
		case *cms.KEKRecipient:
			info.Recipients = append(info.Recipients, Recipient{Kind: "kek", KEKID: r.KeyID,
				Algorithm: wrapAlgName(r.WrapAlg), KEKVersion: int(p11.KEKVersion(r.KeyID))})
		case *cms.KeyTransRecipient:
			info.Recipients = append(info.Recipients, Recipient{Kind: "ktri", SubjectKeyID: r.SubjectKeyID,
				Algorithm: "rsaes-oaep-" + strings.ToLower(strings.ReplaceAll(r.Hash.String(), "-", ""))})
		case *cms.OtherRecipient:
			info.Recipients = append(info.Recipients, Recipient{Kind: "other", Algorithm: r.Reason})
		}
	}
	return info, nil
}

func wrapAlgName(oid asn1.ObjectIdentifier) string {
	for name, o := range map[string]asn1.ObjectIdentifier{
		"aes128-wrap": cms.OIDAES128Wrap, "aes192-wrap": cms.OIDAES192Wrap, "aes256-wrap": cms.OIDAES256Wrap,
		"aes128-wrap-pad": cms.OIDAES128WrapPad, "aes192-wrap-pad": cms.OIDAES192WrapPad, "aes256-wrap-pad": cms.OIDAES256WrapPad,
	} {
		if oid.Equal(o) {
			return name
		}
	}
	return oid.String()
}

// isAuthFailure reports whether a token error from C_Decrypt under AES-GCM
// means "tag mismatch": SoftHSM says CKR_GENERAL_ERROR (TOKEN-FACTS), the
// standard says CKR_ENCRYPTED_DATA_INVALID.
func isAuthFailure(err error) bool {
	code, _ := p11.CodeOf(err)
	switch code {
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		return true
	}
	return false
}
