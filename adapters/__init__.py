"""savegame.adapters: bridges that let LangGraph, Burr and LlamaIndex use savegame savers.

Each framework lives in its own module (``savegame.adapters.langgraph`` ...) and is imported
only when asked for, so this package never pulls in a framework.
"""
