package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/hsmkeys/hsmkeys/provider"
)

var keyNewSpec = spec{
	path:  "key new",
	usage: "key new --kek NAME [--kek NAME...] [--alg aes256|aes128] [--context k=v...] [-o FILE] [--der|--pem]",
	about: `Generates a session key on the token and exports it wrapped under the
newest version of each KEK named (any one of them can bring it back), as a
CMS AuthEnvelopedData. The key's value never leaves the token unwrapped,
and the token itself refuses to wrap it under a KEK the SO did not trust.
Writes to stdout, or atomically to FILE (mode 0600).`,
	examples: `hsmkeys key new --kek backup -o session.key
hsmkeys key new --kek backup --kek escrow --alg aes128 --pem -o session.pem
hsmkeys key new --kek 'pkcs11:object=backup;type=secret-key;id=%00%00%00%02%A1%B2...' -o session.key   # a URI from 'kek list'
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' key new --kek backup --context app=billing -o k.der`,
}

var keyInspectSpec = spec{
	path:  "key inspect",
	usage: "key inspect [--verify [--context k=v...]] FILE",
	about: `Tells what an exported key or an encrypted message is: its kind, format
(DER or PEM), algorithm, encryption context and recipients (the KEK ids and
versions, or RSA subject key ids, it is wrapped for). Needs no token and
no PIN; nothing it shows is authenticated. With --verify it opens FILE on
the token (an exported key is imported, a message decrypted and thrown
away) and reports ok only if every check passes; without --context it
verifies under the context the file states. FILE "-" is stdin.`,
	examples: `hsmkeys key inspect session.key
hsmkeys key inspect --json report.cms
hsmkeys key inspect --verify --context app=billing session.key
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' key inspect --verify session.key`,
}

// maxInspect bounds what key inspect reads (provider.Inspect takes the
// whole file in memory).
const maxInspect = provider.MaxSealSize

func (c *cli) cmdKeyNew(ctx context.Context, args []string) error {
	fs := c.newFlags(keyNewSpec)
	var kekNames listFlag
	ectx := contextFlag{}
	var armor armorFlags
	fs.Var(&kekNames, "kek", "wrap for the KEK `NAME` (repeatable)")
	alg := fs.String("alg", "aes256", "session key `ALG`: aes256 or aes128")
	fs.Var(ectx, "context", "bind the encryption context `k=v` (repeatable)")
	out := fs.String("o", "", "write to `FILE` instead of stdout")
	armor.add(fs, false)
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	if len(kekNames) == 0 {
		return usagef(fs.spec.path, "key new needs --kek NAME")
	}
	a, err := provider.ParseAlgorithm(*alg)
	if err != nil {
		return usagef(fs.spec.path, "--alg %q: want aes256 or aes128", *alg)
	}
	if err := firstErr(armor.check(fs), c.refuseBinaryToTerminal(*out, armor.pem), c.dataToStdout(fs, *out)); err != nil {
		return err
	}
	p, err := c.openProvider(ctx, provider.ExportTrusted, 0)
	if err != nil {
		return err
	}
	defer p.Close()
	keks, err := resolveKEKs(ctx, p, kekNames)
	if err != nil {
		return err
	}
	k, err := p.Generate(ctx, a)
	if err != nil {
		return err
	}
	defer k.Destroy(context.WithoutCancel(ctx))
	blob, err := p.Export(ctx, k, keks, provider.Options{Context: ectx, Armor: armor.pem})
	if err != nil {
		return err
	}
	if err := c.writeAtomic(*out, blob); err != nil {
		return err
	}
	if c.json {
		id := k.ID()
		return c.writeJSON(map[string]any{
			"file": *out, "key_id": hex.EncodeToString(id[:]), "algorithm": a.String(),
			"format": formatName(armor.pem), "keks": keksToJSON(keks),
		})
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func formatName(pem bool) string {
	if pem {
		return "pem"
	}
	return "der"
}

// writeAtomic writes data to path (or stdout) as one atomic output.
func (c *cli) writeAtomic(path string, data []byte) error {
	o, err := c.createOutput(path, 0o600)
	if err != nil {
		return err
	}
	defer o.abort()
	if _, err := o.Write(data); err != nil {
		return err
	}
	return o.commit()
}

// resolveKEKs finds the newest version of each KEK named, or the version
// an object URI names, once each.
func resolveKEKs(ctx context.Context, p *provider.Provider, names []string) ([]*provider.KEK, error) {
	var out []*provider.KEK
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		k, err := p.KEK(ctx, n)
		if err != nil {
			return nil, kekNotFound(err)
		}
		if seen["id:"+string(k.ID)] { // a label and a URI of one KEK
			continue
		}
		seen["id:"+string(k.ID)] = true
		out = append(out, k)
	}
	return out, nil
}

type kekRefJSON struct {
	Label   string `json:"label"`
	Version int    `json:"version"`
	ID      string `json:"id"`
	Type    string `json:"type"`
}

func keksToJSON(ks []*provider.KEK) []kekRefJSON {
	out := make([]kekRefJSON, len(ks))
	for i, k := range ks {
		out[i] = kekRefJSON{k.Label, k.Version, hex.EncodeToString(k.ID), kekTypeName(k)}
	}
	return out
}

type recipientJSON struct {
	Kind         string `json:"kind"`
	KEKID        string `json:"kek_id"`
	SubjectKeyID string `json:"subject_key_id"`
	Algorithm    string `json:"algorithm"`
	KEKVersion   int    `json:"kek_version"`
}

type inspectJSON struct {
	File       string            `json:"file"`
	Kind       string            `json:"kind"`
	Format     string            `json:"format"`
	Algorithm  string            `json:"algorithm"`
	Recipients []recipientJSON   `json:"recipients"`
	Context    map[string]string `json:"context"`
	ContentLen int64             `json:"content_len"`
	Verified   *bool             `json:"verified,omitempty"`
}

func (c *cli) cmdKeyInspect(ctx context.Context, args []string) error {
	fs := c.newFlags(keyInspectSpec)
	verify := fs.Bool("verify", false, "open it on the token: import a key, decrypt a message")
	ectx := contextFlag{}
	fs.Var(ectx, "context", "with --verify: the encryption context `k=v` (repeatable)")
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(operands) != 1 {
		return usagef(fs.spec.path, "key inspect takes one FILE")
	}
	blob, err := c.readSmall(ctx, operands[0], maxInspect)
	if err != nil {
		return err
	}
	info, err := provider.Inspect(blob)
	if err != nil {
		return err
	}
	out := inspectToJSON(operands[0], info)
	if *verify {
		if len(ectx) == 0 {
			ectx = info.Context
		}
		if err := c.verify(ctx, info, blob, ectx); err != nil {
			return err
		}
		ok := true
		out.Verified = &ok
	}
	if c.json {
		return c.writeJSON(out)
	}
	return printInspect(c.stdout, out)
}

// verify opens blob on the token: Import for a key, Decrypt for a message.
func (c *cli) verify(ctx context.Context, info *provider.Info, blob []byte, ectx map[string]string) error {
	p, err := c.openProvider(ctx, provider.ExportTrusted, 0)
	if err != nil {
		return err
	}
	defer p.Close()
	o := provider.Options{Context: ectx}
	if info.Kind == "key" {
		k, err := p.Import(ctx, blob, o)
		if err != nil {
			return kekNotFound(err)
		}
		return k.Destroy(ctx)
	}
	return kekNotFound(p.Decrypt(ctx, io.Discard, bytes.NewReader(blob), int64(len(blob)), o))
}

func inspectToJSON(file string, info *provider.Info) inspectJSON {
	out := inspectJSON{File: file, Kind: info.Kind, Format: info.Format, Algorithm: info.Algorithm.String(),
		Recipients: []recipientJSON{}, Context: info.Context, ContentLen: info.ContentLen}
	if out.Context == nil {
		out.Context = map[string]string{}
	}
	for _, r := range info.Recipients {
		out.Recipients = append(out.Recipients, recipientJSON{Kind: r.Kind, KEKID: hex.EncodeToString(r.KEKID),
			SubjectKeyID: hex.EncodeToString(r.SubjectKeyID), Algorithm: r.Algorithm, KEKVersion: r.KEKVersion})
	}
	return out
}

func printInspect(w io.Writer, in inspectJSON) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "file\t%s\n", in.File)
	fmt.Fprintf(tw, "kind\t%s\n", in.Kind)
	fmt.Fprintf(tw, "format\t%s\n", in.Format)
	fmt.Fprintf(tw, "algorithm\t%s\n", in.Algorithm)
	fmt.Fprintf(tw, "context\t%s\n", contextString(in.Context))
	fmt.Fprintf(tw, "recipients\t%d\n", len(in.Recipients))
	for _, r := range in.Recipients {
		switch r.Kind {
		case "kek":
			fmt.Fprintf(tw, "  kek\t%s\tkek id %s\tversion %d\n", r.Algorithm, r.KEKID, r.KEKVersion)
		default:
			fmt.Fprintf(tw, "  %s\t%s\tsubject key id %s\n", r.Kind, r.Algorithm, r.SubjectKeyID)
		}
	}
	if in.Verified != nil {
		fmt.Fprintf(tw, "verified\tok\n")
	}
	return tw.Flush()
}

func contextString(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%s", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// readSmall reads a whole file ("-": stdin) of at most limit bytes.
func (c *cli) readSmall(ctx context.Context, path string, limit int64) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		r = newCtxReader(ctx, c.stdin)
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, limit>>20)
	}
	return data, nil
}
