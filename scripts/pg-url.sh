# Sourced by scripts/backup and scripts/restore: split a postgres:// URL so the password
# travels in PGPASSWORD (environment, not visible in `ps`) instead of on the command line.
#   pg_url_split URL   -> sets PG_URL_NO_PASSWORD and exports PGPASSWORD (if the URL has one)
# Percent-decodes $1 into PCT_DECODED: each %XX becomes its byte; everything else,
# backslashes included, stays as it is (printf '%b' on the whole string would read \n,
# \t, \\ as escapes). A variable, not stdout: $(...) would drop trailing newlines.
pct_decode() {
  local s=$1 out='' c i=0
  while (( i < ${#s} )); do
    c=${s:i:1}
    if [[ $c == % && ${s:i+1:2} =~ ^[0-9A-Fa-f]{2}$ ]]; then
      printf -v c '%b' "\\x${s:i+1:2}"
      i=$((i + 3))
    else
      i=$((i + 1))
    fi
    out+=$c
  done
  PCT_DECODED=$out
}

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
      pct_decode "$pass"
      export PGPASSWORD=$PCT_DECODED
    fi
    PG_URL_NO_PASSWORD="$scheme://$user@$hostpart"
  else
    PG_URL_NO_PASSWORD=$url
  fi
}
