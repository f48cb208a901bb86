"""memorylib: the code behind the book *Memory that learns what to keep and what to forget*.

Every public name is introduced in a chapter first; its docstring says which one.
"""

__version__ = "0.1.0"
