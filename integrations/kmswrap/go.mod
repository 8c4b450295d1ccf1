module github.com/hsmkeys/hsmkeys/integrations/kmswrap

go 1.26.0

require (
	github.com/hashicorp/go-kms-wrapping/v2 v2.0.18
	github.com/hsmkeys/hsmkeys v0.0.0
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/hashicorp/go-secure-stdlib/parseutil v0.1.9 // indirect
	github.com/hashicorp/go-secure-stdlib/strutil v0.1.2 // indirect
	github.com/hashicorp/go-sockaddr v1.0.6 // indirect
	github.com/hashicorp/go-uuid v1.0.3 // indirect
	github.com/miekg/pkcs11 v1.1.2 // indirect
	github.com/mitchellh/mapstructure v1.5.0 // indirect
	github.com/ryanuber/go-glob v1.0.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	google.golang.org/protobuf v1.33.0 // indirect
)

replace github.com/hsmkeys/hsmkeys => ../..
