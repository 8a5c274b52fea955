"""The shared form builder (rows from settings field specs) and the message label, as the wizard and panel use them."""

from __future__ import annotations

from PySide6.QtWidgets import QFormLayout, QLabel, QLineEdit, QWidget

from app.forms import ERROR_STYLE, MessageLabel, add_field_rows
from training.lora import TrainSettings


def test_one_row_per_field_with_its_label_widget_and_help(qtbot):
    host = QWidget()
    qtbot.addWidget(host)
    form = QFormLayout(host)
    specs = TrainSettings.field_specs()
    made = []

    def make(f):
        made.append(f.name)
        return QLineEdit(f.name)

    widgets = add_field_rows(form, specs, make)
    assert list(widgets) == made == [f.name for f in specs] and form.rowCount() == len(specs)
    for row, f in enumerate(specs):
        label = form.itemAt(row, QFormLayout.LabelRole).widget()
        assert label.text() == f.metadata["label"] and label.toolTip() == f.metadata["help"]
        box = form.itemAt(row, QFormLayout.FieldRole).layout()
        assert box.itemAt(0).widget() is widgets[f.name]
        help_label = box.itemAt(1).widget()
        assert isinstance(help_label, QLabel) and help_label.text() == f.metadata["help"]
        assert help_label.wordWrap()


def test_the_sampling_panel_and_the_wizard_share_the_builder():
    import app.sampling_panel
    import app.wizard.settings_page

    assert app.sampling_panel.add_field_rows is add_field_rows
    assert app.wizard.settings_page.add_field_rows is add_field_rows


def test_message_label_turns_red_for_errors_and_back(qtbot):
    label = MessageLabel()
    qtbot.addWidget(label)
    label.show()
    label.show_error("disk full")
    assert label.text() == "disk full" and label.styleSheet() == ERROR_STYLE
    label.show_message("all good")
    assert label.text() == "all good" and label.styleSheet() == ""


def test_a_label_hidden_when_empty_appears_with_text_and_hides_on_clear(qtbot):
    host = QWidget()
    qtbot.addWidget(host)
    label = MessageLabel(hide_when_empty=True)
    label.setParent(host)
    host.show()
    assert not label.isVisibleTo(host)
    label.show_error("bad value")
    assert label.isVisibleTo(host)
    label.clear()
    assert not label.isVisibleTo(host) and label.text() == ""
