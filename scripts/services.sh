#!/usr/bin/env bash
# Starts the local services the tests use, if they are not running: RabbitMQ on 127.0.0.1:5672.
set -euo pipefail
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
  # The node takes a few seconds to answer at all; then wait for its applications.
  for _ in $(seq 1 120); do
    rabbitmqctl -q ping >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
timeout 120 rabbitmqctl -q await_startup
echo "services: RabbitMQ $(rabbitmqctl -q version) is up"
