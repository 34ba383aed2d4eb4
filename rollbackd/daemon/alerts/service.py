"""The webhook receiver's lifecycle in the daemon: started with it, fed its monitors, stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rollbackd.daemon.alerts.router import AlertRouter
from rollbackd.daemon.alerts.settings import AlertsSettings
from rollbackd.daemon.alerts.webhook import WebhookServer
from rollbackd.daemon.metrics import Metrics

if TYPE_CHECKING:
    from rollbackd.daemon.monitor import TargetMonitor

log = logging.getLogger("rollbackd.alerts")


class AlertReceiver:
    def __init__(self, settings: AlertsSettings,
                 monitors: Callable[[], Mapping[str, TargetMonitor]], metrics: Metrics) -> None:
        self.router = AlertRouter(monitors, metrics)
        self.server = WebhookServer(settings, self.router.deliver, metrics)

    def replay(self) -> None:
        """After a reload: the rebuilt alertmanager probes get the alerts still firing."""
        self.router.replay()

    async def stop(self) -> None:
        await self.server.stop()
        await self.router.close()


async def start_alerts(settings: AlertsSettings | None,
                       monitors: Callable[[], Mapping[str, TargetMonitor]],
                       metrics: Metrics) -> AlertReceiver | None:
    """The running receiver, or None when [alerts] is not configured or cannot listen."""
    if settings is None:
        return None
    receiver = AlertReceiver(settings, monitors, metrics)
    try:
        await receiver.server.start()
    except OSError as exc:  # like metrics: the daemon's own probes matter more than this input
        log.error("alerts status=disabled address=%s reason=%s", settings.listen, exc.strerror)
        return None
    return receiver
