# Sourced by scripts/backup and scripts/restore: split a postgres:// URL so the password
# travels in PGPASSWORD (environment, not visible in `ps`) instead of on the command line.
#   pg_url_split URL   -> sets PG_URL_NO_PASSWORD and exports PGPASSWORD (if the URL has one)
pg_url_split() {
  local url=$1 scheme rest creds hostpart user pass
  scheme=${url%%://*}
  rest=${url#*://}
  if [[ $rest == *@* ]]; then
    creds=${rest%%@*}
    hostpart=${rest#*@}
    user=${creds%%:*}
    if [[ $creds == *:* ]]; then
      pass=${creds#*:}
      # Percent-decode the password (URLs encode @ : / and friends).
      export PGPASSWORD=$(printf '%b' "${pass//%/\\x}")
    fi
    PG_URL_NO_PASSWORD="$scheme://$user@$hostpart"
  else
    PG_URL_NO_PASSWORD=$url
  fi
}
