#!/bin/sh
# Entrypoint of the Redis stand-in image (scripts/container/redis-standin.Containerfile):
# `redis-server ...` runs as the redis user, owning /data, with --protected-mode no added
# (as the official image's build does), in the foreground; anything else runs as given.
set -eu
[ "${1:-}" = redis-server ] || exec "$@"
if [ "$(id -u)" = 0 ]; then
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
exec "$@" --protected-mode no
