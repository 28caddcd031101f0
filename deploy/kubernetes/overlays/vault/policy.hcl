# Read-only access to the one secret that holds Portainer's database key and admin
# password, on a KV version 2 engine mounted at "secret/". For KV version 1, the
# path is "secret/portainer" instead of "secret/data/portainer".
path "secret/data/portainer" {
  capabilities = ["read"]
}
