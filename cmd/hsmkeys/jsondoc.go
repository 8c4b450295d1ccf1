package main

import (
	"encoding/json"
)

// jsonSchema is the version of the --json documents. It changes when a
// field is removed or changes meaning; new fields may appear within one.
const jsonSchema = 1

// jsonDoc is the one document a command writes on stdout with --json:
//
//	{"schema": 1, "command": "kek list", "ok": true, "result": ...}
//	{"schema": 1, "command": "kek list", "ok": false, "error": "...",
//	 "hint": "...", "exit": 1}
//
// A failing command that got part of its work done (doctor with problems,
// a batch with files that failed) keeps its result as well.
type jsonDoc struct {
	Schema  int      `json:"schema"`
	Command string   `json:"command,omitempty"`
	OK      bool     `json:"ok"`
	Result  any      `json:"result,omitempty"`
	Error   string   `json:"error,omitempty"`
	Hint    string   `json:"hint,omitempty"`
	Hints   []string `json:"hints,omitempty"` // when there are several lines
	Exit    int      `json:"exit"`
}

// setResult keeps v for the document written when the command ends.
func (c *cli) setResult(v any) error {
	c.result = &jsonDoc{Result: v}
	return nil
}

// emitJSON writes the document with --json: err nil is success.
func (c *cli) emitJSON(err error, hints []string, code int) {
	if !c.json || c.describe != nil {
		return
	}
	d := c.result
	if d == nil {
		if err == nil {
			return // nothing to say (help)
		}
		d = &jsonDoc{}
	}
	d.Schema, d.Command, d.OK, d.Exit = jsonSchema, c.path, err == nil, code
	if err != nil {
		d.Error = err.Error()
		if len(hints) > 0 {
			d.Hint = hints[0]
		}
		if len(hints) > 1 {
			d.Hints = hints
		}
	}
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(d)
}
