"""The notifier: Alertmanager webhooks -> durable outbox -> one Slack message per alert group.

Data flows one way: ``webhook`` (parse) -> ``outbox`` (persist, then ack) -> ``worker``
(schedule per channel) -> ``delivery`` (one idempotent step per group) -> the Slack sink
(``agent.clients.slack``, routes in ``agent.clients.slack_params``), with ``incident``,
``alert_links`` and ``blocks`` as pure helpers of delivery.
"""
