"""The emoji-styles dataset: open emoji sets as captioned images, split for style x concept zero-shot, and its judges.

`export.export_emoji_styles` writes the dataset (see `export`'s docstring for the
sources, caption grammar and split rule); `judge` holds the style and
Unicode-subgroup classifiers that `minidalle eval-emoji` uses.
"""
