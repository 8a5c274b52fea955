"""What a reply used, in the main window: a turn's work with documents and/or MCP tools, the sources and tool
calls collected from its events and stored with the reply when it ends, and shown again (Documents and Tools
tabs, the transcript, the context bar) when the conversation is opened or a reply's "sources" link is clicked.
A mixin of app.main.MainWindow."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from app.docs_chat import SourcesRetrieved, chat_with_sources
from engine.docs.search import Hit
from engine.reply_meta import call_record, hits_from_records, source_records


@dataclass
class TurnExtras:
    """What one running reply has used so far."""

    reply: int
    collection: str = ""
    hits: list[Hit] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)


class ReplyExtras:
    """Documents and tools around a turn (the window's `_start` asks for the work, events and the end)."""

    def turn_work(self, reply: int, messages, settings, policy, continue_last: bool):
        """The engine work of a turn: retrieval first when the conversation has documents, then the tool loop
        when MCP servers are enabled (on the messages with their sources), else a plain chat."""
        docs = self.docs_panel.retrieval()  # (collection, budget) when the conversation has documents
        self.docs_panel.set_sources([])
        tool_reply = self._tool_reply(settings, policy, continue_last)
        extras = self._extras = TurnExtras(reply, docs[0] if docs else "")
        measure_bar = self.inspector.active()
        tools_of = self.tool_set_source() if tool_reply is not None else None

        def work(engine):
            if docs:
                measure = (
                    (lambda sent: engine.context_budget(sent, "", settings, policy, tools_of and tools_of()))
                    if measure_bar
                    else None
                )
                return chat_with_sources(engine, *docs, messages, settings, policy, continue_last, extras.hits,
                                         tool_reply, measure)  # fmt: skip
            if tool_reply is not None:
                return tool_reply(engine, messages)
            return engine.chat(messages, settings, policy, continue_last)

        return work

    def _tool_client(self):
        """The MCP client of the servers the open conversation enabled (None: none are)."""
        from app.tool_chat_gui import GuiApprover, ToolSession

        if not hasattr(self, "tool_session"):
            self.tool_session, self.tool_approver = ToolSession(), GuiApprover(self)
        return self.tool_session.client_for(self.tools_panel.enabled_specs())

    def tool_set_source(self):
        """When the open conversation uses tools: a function, to be called with the engine (on its worker thread:
        it starts the servers if they are not yet), giving the ToolSet its next turn renders; else None. A server
        that fails leaves its tools out (the turn itself says why)."""
        from engine.tools import ToolSet

        choice = self.tools_panel.choice.currentText()
        client = self._tool_client() if choice != "none" else None
        if client is None:
            return None

        def tools():
            try:
                listed = tuple(t.tool for t in client.tools())
            except Exception:  # the tool turn reports it; the context view goes on without tools
                return None
            return ToolSet(listed, choice) if listed else None

        return tools

    def _tool_reply(self, settings, policy, continue_last: bool):
        """With MCP servers enabled in the Tools tab: the reply runs the tool loop (app/tool_chat_gui.py)."""
        from app.tool_chat_gui import gui_reply

        client = self._tool_client()
        choice = self.tools_panel.choice.currentText()
        if client is None or continue_last or choice == "none":
            return None
        self.tools_panel.clear_calls()
        approve = self.tool_approver
        return lambda engine, sent: gui_reply(engine, sent, client, choice, approve, settings, policy)

    def extras_event(self, ev) -> bool:
        """Take a turn's sources or tool-call event; True when it was one (not a ChatSession event)."""
        from engine.tool_loop import ToolCallCut, ToolCallFinished, ToolCallStarted

        if isinstance(ev, ToolCallCut):  # the reply's text stays; the user learns why no tool ran
            message = ev.message("Max tokens (Sampling tab)")
            self.tools_panel.status.setText(message)
            self.statusBar().showMessage(message, 20_000)
            return True
        if isinstance(ev, SourcesRetrieved):
            self.docs_panel.set_sources(list(ev.hits))
            self.inspector.show_sources(ev)
            return True
        if isinstance(ev, (ToolCallStarted, ToolCallFinished)):
            self.tools_panel.show_call(ev)
            extras = getattr(self, "_extras", None)
            if isinstance(ev, ToolCallFinished) and extras is not None:
                extras.calls.append(call_record(ev))
            return True
        return False

    def with_live_calls(self, live):
        """The reply being written, with the calls it has made so far (the transcript shows them under it)."""
        extras = getattr(self, "_extras", None)
        if extras is None or extras.reply != live.id or not extras.calls:
            return live
        return replace(live, tool_calls=tuple(extras.calls))

    def store_extras(self, mid: int) -> None:
        """The reply has ended (done, stopped or failed): store what it used with it. A turn that used nothing
        (a continued reply) leaves what the reply had."""
        extras = getattr(self, "_extras", None)
        self._extras = None
        if extras is None or extras.reply != mid or not (extras.hits or extras.calls):
            return
        try:
            self.store.set_reply_meta(
                mid, source_records(extras.hits, extras.collection) or None, extras.calls or None
            )
        except Exception as err:  # the reply itself is stored; say what was not
            self.statusBar().showMessage(
                f"The reply's sources and tool calls could not be saved: {err}", 8000
            )
            return
        self.render_conversation()  # the transcript shows the calls under the reply, and its sources link

    def show_reply_extras(self, mid: int | None = None, tab: str = "") -> None:
        """Reply `mid`'s sources in the Documents tab and its calls in the Tools tab (None: the open
        conversation's last reply); `tab`: bring that tab to the front."""
        msg = None
        if mid is not None:
            msg = self.store.message(mid)
        elif self.conversation is not None:
            msg = next(
                (m for m in reversed(self.store.path(self.conversation)) if m.role == "assistant"), None
            )
        hits = hits_from_records(msg.sources) if msg is not None else []
        if mid is None:
            self.docs_panel.set_sources(hits)
        else:
            first = " ".join(msg.content.split())[:40]
            self.docs_panel.set_sources(
                hits, f"Sources of the reply “{first}…”" if first else "Sources of the reply"
            )
        if msg is not None and msg.tool_calls:
            self.tools_panel.show_stored_calls(msg.tool_calls)
        else:
            self.tools_panel.clear_calls()
        panel = {"Documents": self.docs_panel, "Tools": self.tools_panel}.get(tab)
        if panel is not None:
            self.side.setCurrentWidget(panel)
